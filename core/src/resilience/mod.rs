//! Resilience decisions as pure state machines of (state, event, now, entropy): classifying
//! outcomes, retry policy and budget, circuit breaking, and balancing. No clock, no RNG, no I/O:
//! drivers pass time and random bits in, which makes every decision reproducible in tests.
//!
//! This is the first part of issue 6 (the policies in core); wiring them into multi-endpoint
//! clients in the drivers is still to come.

pub mod balance;
pub mod breaker;
pub mod call;
pub mod eject;
pub mod retry;
