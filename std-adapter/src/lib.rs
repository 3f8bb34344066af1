//! Blocking `std::net` client and server for the Apache RocketMQ remoting protocol.
//!
//! For programs that do not want an async runtime: plain sockets and threads drive the
//! `remora-core` [`Connection`](remora_core::Connection) machine. The driver moves bytes, reads
//! the clock and wakes threads; every protocol decision (matching, deadlines, busy answers,
//! which requests may have reached the peer) is the core's.
//!
//! - [`Client`]: `call` from any number of threads over a pool of multiplexed connections
//!   (least in-flight first), [`Client::call_then`] (returns at once; a continuation gets the
//!   outcome, as Java's `invokeAsync`: one thread keeps many calls in flight), `oneway`,
//!   reconnect with backoff, short-connection mode, idle expiry, and a [`Handler`] for requests
//!   the server sends.
//! - [`Cluster`]: a client over several endpoints: the core's `ClusterCall` decides (balancing,
//!   retries, hedging, breakers, ejection, probes, resolver, hooks, fallback); the cluster runs
//!   its loop on threads and keeps latency histograms. [`Dns`] resolves names for it.
//! - [`namesrv::RouteFollower`]: a topic's route from RocketMQ name servers, kept up to date,
//!   as a resolver for a [`Cluster`] (the writable masters).
//! - [`Server`]: a handler per request on a worker pool, or inline on each connection's reader
//!   ([`Dispatch::Inline`]: a read's requests handled in order, their answers written
//!   together), `SYSTEM_BUSY` beyond the in-flight limit, `REQUEST_CODE_NOT_SUPPORTED` from the
//!   default [`NotSupported`] handler, graceful stop.
//!
//! TLS (`remora-tls`): [`Server::bind_tls`] (enforcing or permissive), [`Client::connect_tls`] /
//! [`Client::lazy_tls`] (SNI from the address, handshake within the connect timeout, a failed
//! handshake a failed connect carrying the `TlsError`), [`Cluster::with_tls`] (every endpoint
//! over one `ClientTls`), [`namesrv::FollowerConfig::tls`]. The connection drives a
//! `remora_tls::Session` over the machine — one code path with plaintext.
//!
//! Threads: each connection has a reader thread that never blocks on a write (so two peers can
//! never deadlock on full socket buffers) and pauses while the machine does not want input
//! (backpressure: its peer is not reading our answers). Callers, workers and the reader write
//! with non-blocking vectored sends (`sendmsg` of the machine's chunks: coalesced headers and
//! small bodies, large bodies from the caller's own memory, never copied), and a thread that finds
//! another one writing leaves its frames to it, so writes coalesce under load; what a slow peer
//! leaves unwritten goes to a writer thread of that connection only, so no worker ever waits for
//! one peer. The reader reads straight into the machine's read buffer (decoded bodies are slices
//! of it). A call keeps no per-call state of its own: its caller's per-thread slot rides in the
//! machine's waiter as the request's token, so a call allocates nothing in steady state.
//! `call_then`'s continuation rides there instead; it runs where the outcome is learnt (the
//! reader, after a read: calls it starts are written together once the read's continuations
//! have run), never under a lock, and a timer thread, started by a connection's first
//! `call_then`, expires those calls (nobody's thread waits for them). A server's connections share a
//! core [`Budget`](remora_core::Budget) (buffered bytes, connection count); see
//! [`ServerConfig`] and [`Server::stats`].

mod client;
mod cluster;
mod conn;
mod dns;
mod handler;
pub mod namesrv;
mod server;

pub use client::{Client, ClientConfig, Mode};
pub use cluster::{
    CallOpts, Cluster, ClusterConfig, ClusterError, Counts, EndpointReport, Fallback, Hook,
    Resolver, Watch,
};
pub use conn::{Dispatch, Peer};
pub use dns::Dns;
pub use handler::{Handler, NotSupported};

/// Why a call got no response (the core's [`CallError`](remora_core::CallError)).
pub type Error = remora_core::CallError;
pub use server::{Server, ServerConfig};
