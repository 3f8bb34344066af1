//! Remora: the Apache RocketMQ remoting protocol as a sans-IO core plus drivers.
//!
//! This facade re-exports the workspace crates: [`core`] (framing, header codecs; `no_std`),
//! [`uring`] (io_uring driver, not yet implemented) and [`std_net`] (blocking driver, not yet
//! implemented).

pub use remora_core as core;
pub use remora_std as std_net;
pub use remora_tls as tls;
pub use remora_uring as uring;
