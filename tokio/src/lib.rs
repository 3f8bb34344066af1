//! tokio (epoll) client and server for the Apache RocketMQ remoting protocol.
//!
//! The same `remora-core` [`Connection`](remora_core::Connection) machine as the std and
//! io_uring drivers, on tokio's `TcpStream`. The driver only moves bytes, reads the clock, waits
//! and counts: matching, deadlines, busy answers and which requests may have reached the peer are
//! the core's decisions.
//!
//! Each connection is one task that owns the socket. Per turn it writes everything queued since
//! its last write in one `write` (the machine coalesces frames into one slice), reads straight
//! into the machine's read buffer (bodies stay zero-copy slices of it), and arms one timer for
//! the machine's next deadline. Callers on any thread share the machine through one mutex with
//! the task, and each waits on a reusable slot that rides in the machine as its request's token
//! (no map of calls in the driver): in steady state, calls through a client and server allocate
//! less than once per hundred calls, counted (`tests/tests/tokio_alloc.rs`).
//!
//! TLS (`remora-tls`): [`Server::bind_tls`] (enforcing or permissive), [`Client::connect_tls`] /
//! [`Client::lazy_tls`], [`Cluster::with_tls`] (every endpoint over one `ClientTls`); each
//! connection task drives a `remora_tls::Session` over the machine — one code path with
//! plaintext.
//!
//! - [`Client`]: `Send + Sync + Clone`, a pool of multiplexed connections (the core's pool
//!   policy: least in-flight first, reconnect with the core's backoff), timeouts, oneway, and a
//!   [`Handler`](remora_core::Handler) for requests the server sends.
//! - [`Server`]: the core `Handler` API, run inline or on the blocking pool ([`Dispatch`]),
//!   `SYSTEM_BUSY` beyond the in-flight limit, [`Peer`]s to send requests to clients, graceful
//!   stop; the core's server-wide [`Budget`](remora_core::Budget) (most connections, most bytes
//!   buffered: beyond it new requests are answered `SYSTEM_BUSY` and new connections refused,
//!   with a `tracing` warning) and its counters in [`Server::stats`].
//!
//! Servers and clients alike stop reading a peer that does not read what they owe it (the
//! machine's `wants_read`) and answer the requests a peer sent before half-closing.
//!
//! - [`Cluster`]: `Send + Sync + Clone`, a client over several endpoints on the core's cluster
//!   call machine (balancing, retries, hedging, breakers, ejection, probes, a [`Resolver`]'s
//!   endpoint changes, hooks, per-call [`CallOpts`], fallback); this crate only runs each
//!   attempt as a task and waits for the first of an attempt's end and the call's next deadline.
//!
//! All run on the tokio runtime that created them (any flavour, with the `net` and `time`
//! drivers enabled).

mod client;
mod cluster;
mod conn;
mod server;

pub use client::{Client, ClientConfig};
pub use cluster::{
    CallOpts, Cluster, ClusterConfig, ClusterError, Counts, EndpointReport, Fallback, Hook,
    Resolver, Watch,
};
pub use conn::{CallFuture, Dispatch, Peer};
pub use server::{Server, ServerConfig};
