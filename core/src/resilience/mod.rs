//! Resilience decisions as pure state machines of (state, event, now, entropy): classifying
//! outcomes, retry policy and budget, circuit breaking, and balancing. No clock, no RNG, no I/O:
//! drivers pass time and random bits in, which makes every decision reproducible in tests.
//!
//! [`policies::Policies`] gathers every setting; [`call`] is the multi-endpoint call machine the
//! drivers' cluster clients run.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod call;
pub mod eject;
pub mod policies;
pub mod pool;
#[cfg(feature = "std")]
pub mod resolve;
pub mod retry;
