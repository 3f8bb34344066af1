//! What a driver's call can send: a [`Command`] (encoded when queued) or an [`Encoded`] request
//! (encoded once, re-sent with a new opaque), so a driver has one call path for both.

use crate::codec::command::Command;
use crate::codec::encoded::Encoded;
use crate::conn::connection::{Connection, RequestId, SendError};
use crate::time::Instant;

/// A request a [`Connection`] can queue.
pub trait Outgoing {
    /// Queues it on `connection`, to be answered by `deadline`.
    fn send(
        self,
        connection: &mut Connection,
        deadline: Instant,
        now: Instant,
    ) -> Result<RequestId, SendError>;
}

impl Outgoing for Command {
    fn send(self, c: &mut Connection, at: Instant, now: Instant) -> Result<RequestId, SendError> {
        c.send_request(self, at, now)
    }
}

impl Outgoing for &Encoded {
    fn send(self, c: &mut Connection, at: Instant, now: Instant) -> Result<RequestId, SendError> {
        c.send_encoded_request(self, at, now)
    }
}
