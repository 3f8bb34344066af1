//! io_uring client and server for the Apache RocketMQ remoting protocol, thread per core.
//!
//! The same `remora-core` [`Connection`](remora_core::Connection) machine as the std driver, driven
//! by io_uring in two ways:
//!
//! - [`EventLoop`] (module [`ring`], on the `io-uring` crate): one loop per thread owns all of its
//!   connections' machines in a slab, with one deadline heap for all of them; completions are
//!   handled inline (a server's handler runs in the loop), and every send a turn produced goes to
//!   the kernel with the next `io_uring_enter`. Receives draw from a ring of provided buffers
//!   shared by the loop (detected at start; without it each connection receives into its own
//!   buffer), so an idle connection holds no read buffer; accepts are multishot. [`Server`] runs
//!   one per thread (SO_REUSEPORT), and so does `remora bench`'s load generator. Calls made on an
//!   `EventLoop` complete as [`Completion`]s carrying the caller's token. A loop's connections
//!   may also be raw ([`EventLoop::set_raw`], [`EventLoop::connect_raw`]): bytes in and out
//!   through a [`RawHandler`] and no machine — [`Server::bind_echo`] is the protocol server's
//!   loops echoing bytes, the baseline `remora bench --mode raw` measures the protocol against.
//! - tokio-uring 0.5 (for programs that already run a tokio-uring runtime): each connection is
//!   three local tasks on one thread sharing the machine with no locks — a reader that reads
//!   straight into the machine's buffer, a writer that sends the machine's chunks in order (a
//!   body of 512 B or more is a chunk of its own, the caller's `Bytes` sent without a copy; one
//!   write per chunk, since tokio-uring 0.5's `writev` allocates its iovecs on every call and it
//!   has no `sendmsg` for TCP), and a timer. Each call waits on a reusable slot that rides in
//!   the machine as its request's token: no map of calls in the driver.
//!   tokio-uring cannot express multishot operations or provided-buffer rings.
//!
//! Either way the reader pauses while the machine does not want input (its peer is not reading
//! our answers), and a server's connections on all threads share one core
//! [`Budget`](remora_core::Budget) (buffered bytes, connection count).
//!
//! TLS (`remora-tls`) on both: [`Server::bind_tls`], [`EventLoop::connect_secure`],
//! [`LocalClient::connect_tls`] / [`LocalClient::lazy_tls`], [`Client::connect_tls`],
//! [`LocalCluster::with_tls`]; every connection drives a `remora_tls::Session` over its machine —
//! one code path with plaintext; a closed TLS connection says its last words (an alert, or
//! `close_notify`) before its socket shuts.
//!
//! - [`LocalClient`]: for code already on a tokio-uring thread; `call(..).await`.
//! - [`Client`]: a `Send + Sync` handle whose connections live on io_uring threads of its own.
//! - [`EventLoop`]: a loop of your own (client connections with [`EventLoop::connect`] and
//!   [`EventLoop::call`], driven by [`EventLoop::turn`]), on the `io-uring` crate directly.
//! - [`Server`]: one [`EventLoop`] and listener per thread (SO_REUSEPORT), handler inline on the
//!   I/O thread.
//! - [`LocalCluster`]: a client over several endpoints: the core's `ClusterCall` decides
//!   (balancing, retries, hedging, breakers, ejection, probes, resolver, hooks, fallback); the
//!   cluster runs its loop with local tasks. [`dns`] resolves names for it.
//!
//! `LocalClient`, `Client` and `LocalCluster` run on tokio-uring 0.5: submissions are batched per
//! runtime tick, buffers are owned (`BytesMut`/`Bytes`), so the reader fills the machine's own
//! buffer and the writer sends the machine's bytes without a copy; tokio-uring exposes neither
//! multishot receive nor provided-buffer rings, which is why the server and the bench's load
//! generator run on [`EventLoop`] instead (see [`ring`]).

mod client;
mod cluster;
mod conn;
mod dns;
pub mod ring;
mod server;

pub use client::{Client, ClientConfig, LocalClient};
pub use cluster::{
    CallOpts, ClusterConfig, ClusterError, Counts, Fallback, LocalCluster, Resolver, Watch,
};
pub use conn::CallFuture;
pub use dns::dns;
pub use ring::{Completion, ConnId, Echo, EventLoop, LoopConfig, LoopCounts, RawHandler};
pub use server::{Server, ServerConfig};
