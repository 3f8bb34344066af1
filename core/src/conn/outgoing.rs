//! What a driver's call can send: a [`Command`] (encoded when queued) or an [`Encoded`] request
//! (encoded once, re-sent with a new opaque), so a driver has one call path for both.

use crate::codec::command::{Command, SerializeType};
use crate::codec::encoded::Encoded;
use crate::conn::connection::{Connection, RequestId, SendError};
use crate::time::Instant;

/// A request a [`Connection`] can queue.
pub trait Outgoing {
    /// Queues it on `connection`, to be answered by `deadline`; `token` comes back in its
    /// outcome's event (see [`Connection::send_request_with`]).
    fn send<T>(
        self,
        connection: &mut Connection<T>,
        deadline: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError>;

    /// The request's code.
    fn code(&self) -> i32;

    /// How its header is (or will be) encoded.
    fn serialize_type(&self) -> SerializeType;

    /// Its body's length.
    fn body_len(&self) -> usize;
}

impl Outgoing for Command {
    fn send<T>(
        self,
        c: &mut Connection<T>,
        at: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError> {
        c.send_request_with(self, at, now, token)
    }

    fn code(&self) -> i32 {
        self.code
    }

    fn serialize_type(&self) -> SerializeType {
        self.serialize_type
    }

    fn body_len(&self) -> usize {
        self.body().len()
    }
}

impl Outgoing for &Encoded {
    fn send<T>(
        self,
        c: &mut Connection<T>,
        at: Instant,
        now: Instant,
        token: T,
    ) -> Result<RequestId, SendError> {
        c.send_encoded_request_with(self, at, now, token)
    }

    fn code(&self) -> i32 {
        Encoded::code(self)
    }

    fn serialize_type(&self) -> SerializeType {
        Encoded::serialize_type(self)
    }

    fn body_len(&self) -> usize {
        Encoded::body_len(self)
    }
}
