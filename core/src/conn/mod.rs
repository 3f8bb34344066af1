//! The connection layer: the sans-IO [`Connection`](crate::Connection) machine that pairs
//! responses with requests over one stream, its deadline heap and event queue, and the outcome of a call
//! ([`CallError`](crate::CallError)) and the server-side [`Handler`](crate::Handler) API that
//! drivers share, and the server-wide [`Budget`](crate::Budget) its connections share. Built on [`crate::codec`]; knows nothing of several endpoints
//! ([`crate::resilience`]).

pub(crate) mod budget;
pub(crate) mod call;
pub(crate) mod connection;
pub(crate) mod deadlines;
pub(crate) mod events;
pub mod outgoing;
