//! io_uring client and server for the Apache RocketMQ remoting protocol (tokio-uring,
//! thread per core).
//!
//! The same `remora-core` [`Connection`](remora_core::Connection) machine as the std driver, driven
//! by io_uring: each connection is three local tasks on one thread sharing the machine with no
//! locks — a reader that reads straight into the machine's buffer (bodies stay zero-copy
//! slices of it), a writer that sends the machine's chunks in order (everything queued since its
//! last write coalesced into one chunk, except that a body of 512 B or more is a chunk of its own,
//! the caller's `Bytes` sent without a copy — one write per chunk: tokio-uring 0.5's
//! `TcpStream::writev` builds a `Vec` of iovecs on every call, an allocation per write that the
//! no-allocation test of this path forbids, and it has no `sendmsg` for TCP), and a
//! timer for deadlines and idle expiry. The reader pauses while the machine does not want input
//! (its peer is not reading our answers), and a server's connections on all threads share one
//! core [`Budget`](remora_core::Budget) (buffered bytes, connection count). Calls wait on a slot indexed by their `RequestId`, so a
//! response wakes its caller without hashing or allocating.
//!
//! - [`LocalClient`]: for code already on a tokio-uring thread; `call(..).await`.
//! - [`Client`]: a `Send + Sync` handle whose connections live on io_uring threads of its own.
//! - [`Server`]: one listener per thread (SO_REUSEPORT), handler inline on the I/O thread.
//! - [`LocalCluster`]: a client over several endpoints: the core's `ClusterCall` decides
//!   (balancing, retries, hedging, breakers, ejection, probes, resolver, hooks, fallback); the
//!   cluster runs its loop with local tasks. [`dns`] resolves names for it.
//!
//! What tokio-uring 0.5 does and does not let us use: submissions are batched per runtime tick
//! (all reads and writes issued in one turn go to the kernel in one `io_uring_enter`); buffers are
//! owned (`BytesMut`/`Bytes`), which is what lets the reader fill the machine's own buffer and
//! the writer send the machine's bytes without a copy. Registered (fixed) buffers are not used:
//! tokio-uring's `FixedBuf` cannot be a `BytesMut`, so bodies could no longer be slices of the read
//! buffer and every frame would be copied once. Multishot receive and provided-buffer rings are
//! not exposed by tokio-uring 0.5.

mod client;
mod cluster;
mod conn;
mod dns;
mod server;

pub use client::{Client, ClientConfig, LocalClient};
pub use cluster::{
    CallOpts, ClusterConfig, ClusterError, Counts, Fallback, LocalCluster, Resolver, Watch,
};
pub use conn::CallFuture;
pub use dns::dns;
pub use server::{Server, ServerConfig};

/// Runs `handler` on `request`; a panic in it becomes a `SYSTEM_ERROR` answer, so the peer is not
/// left waiting and the I/O thread survives.
pub(crate) fn handle_catching(
    handler: &dyn remora_core::Handler,
    request: remora_core::Command,
) -> remora_core::Command {
    let fallback = request.response(remora_core::codes::SYSTEM_ERROR);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(request))) {
        Ok(response) => response,
        Err(_) => fallback.with_remark("request handler panicked"),
    }
}
