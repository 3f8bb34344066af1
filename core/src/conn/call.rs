//! What drivers share: the outcome of a call ([`CallError`]) and what answers the peer's
//! requests ([`Handler`]).

use alloc::sync::Arc;
use core::fmt;
use core::time::Duration;

use crate::codec::codes;
use crate::codec::command::Command;
use crate::codec::error::EncodeError;
use crate::conn::connection::{CloseReason, RequestError, SendError};

/// Answers requests from the peer.
///
/// Drivers call it on their worker (or I/O) threads, possibly on many at once. For a oneway
/// request the answer is discarded: a oneway request is never answered. Drivers catch a panic
/// and answer `SYSTEM_ERROR`.
pub trait Handler: Send + Sync + 'static {
    /// The response to `request`; build it with [`Command::response`] so it answers in kind.
    fn handle(&self, request: Command) -> Command;
}

impl<F> Handler for F
where
    F: Fn(Command) -> Command + Send + Sync + 'static,
{
    fn handle(&self, request: Command) -> Command {
        self(request)
    }
}

/// A shared handler answers as the handler it shares.
impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn handle(&self, request: Command) -> Command {
        (**self).handle(request)
    }
}

/// Runs around a client's calls: before each attempt's request is sent and after the response
/// the call returns (e.g. to sign requests or to trace).
pub trait Hook: Send + Sync + 'static {
    /// Called on the request before it is sent.
    fn before_send(&self, request: &mut Command) {
        let _ = request;
    }
    /// Called on the response the call returns.
    fn after_receive(&self, response: &mut Command) {
        let _ = response;
    }
}

/// The default handler: answers every request `REQUEST_CODE_NOT_SUPPORTED`, as Java does for a
/// code no processor is registered for.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotSupported;

impl Handler for NotSupported {
    fn handle(&self, request: Command) -> Command {
        codes::not_supported(&request)
    }
}

/// Why a connection could not be made: the transport's own error, kept whole.
#[derive(Clone)]
pub struct ConnectError(Arc<dyn core::error::Error + Send + Sync>);

impl ConnectError {
    /// Wraps the transport's error.
    pub fn new(error: impl core::error::Error + Send + Sync + 'static) -> Self {
        ConnectError(Arc::new(error))
    }

    /// The transport's error.
    pub fn get(&self) -> &(dyn core::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(feature = "std")]
impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        ConnectError::new(e)
    }
}

/// Why a call got no response. Each says whether the request may have reached the server:
/// when [`CallError::may_have_reached_peer`] is false, retrying cannot duplicate it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CallError {
    /// The deadline passed before the response came.
    Timeout {
        /// Whether the request had been written.
        written: bool,
    },
    /// The connection ended (peer closed, reset, I/O error) before the response came.
    ConnectionLost {
        /// Whether the request had been written.
        written: bool,
    },
    /// The peer broke the protocol (corrupt frame, oneway-flagged response); the connection was
    /// closed.
    Protocol {
        /// What it did.
        reason: CloseReason,
        /// Whether the request had been written.
        written: bool,
    },
    /// The client was closed.
    Closed {
        /// Whether the request had been written.
        written: bool,
    },
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(ConnectError),
    /// Every connection is down and the next reconnect attempt is not due yet.
    Unavailable {
        /// When the next attempt may be made.
        retry_in: Duration,
    },
    /// Too many calls already await responses on the connection.
    TooManyInFlight,
    /// Too many bytes already wait to be written on the connection.
    Backpressure,
    /// The request cannot be encoded (too large, key too long).
    Encode(EncodeError),
}

impl CallError {
    /// Whether the server may have received (and acted on) the request.
    pub fn may_have_reached_peer(&self) -> bool {
        match *self {
            CallError::Timeout { written }
            | CallError::ConnectionLost { written }
            | CallError::Protocol { written, .. }
            | CallError::Closed { written } => written,
            CallError::Connect(_)
            | CallError::Unavailable { .. }
            | CallError::TooManyInFlight
            | CallError::Backpressure
            | CallError::Encode(_) => false,
        }
    }

    /// Whether the request never left this process (no connection, never written, or refused by
    /// a local limit): it may be requeued transparently, without using an attempt.
    pub fn never_left(&self) -> bool {
        matches!(
            self,
            CallError::Connect(_)
                | CallError::Unavailable { .. }
                | CallError::TooManyInFlight
                | CallError::Backpressure
                | CallError::ConnectionLost { written: false }
                | CallError::Timeout { written: false }
        )
    }

    /// Whether retrying can only help and never duplicate: the request never left this process,
    /// and the cause is transient.
    pub fn is_safe_to_retry(&self) -> bool {
        !self.may_have_reached_peer()
            && !matches!(self, CallError::Encode(_) | CallError::Closed { .. })
    }
}

impl From<RequestError> for CallError {
    fn from(error: RequestError) -> CallError {
        let written = error.written;
        match error.closed {
            None => CallError::Timeout { written },
            Some(CloseReason::Local) => CallError::Closed { written },
            Some(CloseReason::ConnectionLost) => CallError::ConnectionLost { written },
            Some(reason) => CallError::Protocol { reason, written },
        }
    }
}

impl From<SendError> for CallError {
    fn from(error: SendError) -> CallError {
        match error {
            SendError::Closed => CallError::ConnectionLost { written: false },
            SendError::TooManyWaiters { .. } => CallError::TooManyInFlight,
            SendError::TransmitFull { .. } => CallError::Backpressure,
            SendError::DeadlinePassed => CallError::Timeout { written: false },
            SendError::Encode(e) => CallError::Encode(e),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let written = |w: bool| {
            if w {
                "the request was written and may have reached the server"
            } else {
                "the request was never written"
            }
        };
        match self {
            CallError::Timeout { written: w } => write!(f, "timed out ({})", written(*w)),
            CallError::ConnectionLost { written: w } => {
                write!(f, "connection lost ({})", written(*w))
            }
            CallError::Protocol { reason, written: w } => {
                write!(f, "protocol error: {reason} ({})", written(*w))
            }
            CallError::Closed { written: w } => write!(f, "client closed ({})", written(*w)),
            CallError::Connect(e) => write!(f, "cannot connect: {e}"),
            CallError::Unavailable { retry_in } => write!(
                f,
                "no connection available; next reconnect attempt in {} ms",
                retry_in.as_millis()
            ),
            CallError::TooManyInFlight => f.write_str("too many calls in flight on the connection"),
            CallError::Backpressure => f.write_str("too many bytes waiting to be written"),
            CallError::Encode(e) => write!(f, "cannot encode request: {e}"),
        }
    }
}

impl core::error::Error for CallError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            CallError::Connect(e) => Some(e.get()),
            CallError::Encode(e) => Some(e),
            _ => None,
        }
    }
}
