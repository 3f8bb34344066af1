//! Resilience decisions as pure state machines of (state, event, now, entropy): classifying
//! outcomes, retry policy and budget, circuit breaking, and balancing. No clock, no RNG, no I/O:
//! drivers pass time and random bits in, which makes every decision reproducible in tests.
//!
//! [`policies::Policies`] gathers every setting; [`call`] is the multi-endpoint call machine, and
//! [`cluster`] the whole cluster call around it (classification, hedging, hooks, fallback,
//! oneway, probes, resolver refreshes) that the drivers' cluster clients run with a small loop.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod call;
pub mod cluster;
pub mod eject;
pub mod policies;
pub mod pool;
pub mod resolve;
pub mod retry;
