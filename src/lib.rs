//! Remora: the Apache RocketMQ remoting protocol as a sans-IO core plus drivers.
//!
//! This facade re-exports the workspace crates: [`core`] (framing, header codecs, the connection
//! machine and the resilience policies; `no_std`), [`uring`] (io_uring driver: clients, server
//! and the multi-endpoint `LocalCluster`), [`std_net`] (blocking `std::net` driver: client,
//! server and `Cluster`), [`tokio_net`] (tokio driver: client and server) and [`tls`] (the
//! sans-IO rustls layer the drivers put between the socket and the machine). The `remora`
//! command-line tool is this package's binary.
#![deny(missing_docs)]

pub use remora_core as core;
pub use remora_std as std_net;
pub use remora_tls as tls;
pub use remora_tokio as tokio_net;
pub use remora_uring as uring;

/// The README's Rust examples, compiled and run as doctests so they stay true to the code.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
