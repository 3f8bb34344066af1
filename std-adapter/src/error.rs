//! What a call can end with, besides its response.

use std::fmt;
use std::io;
use std::time::Duration;

use remora_core::{CloseReason, EncodeError, RequestError, SendError};

/// Why a call got no response. Each says whether the request may have reached the server:
/// when [`Error::may_have_reached_peer`] is false, retrying cannot duplicate it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
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
    Connect(io::Error),
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

impl Error {
    /// Whether the server may have received (and acted on) the request.
    pub fn may_have_reached_peer(&self) -> bool {
        match *self {
            Error::Timeout { written }
            | Error::ConnectionLost { written }
            | Error::Protocol { written, .. }
            | Error::Closed { written } => written,
            Error::Connect(_)
            | Error::Unavailable { .. }
            | Error::TooManyInFlight
            | Error::Backpressure
            | Error::Encode(_) => false,
        }
    }

    /// Whether retrying can only help and never duplicate: the request never left this process,
    /// and the cause is transient.
    pub fn is_safe_to_retry(&self) -> bool {
        !self.may_have_reached_peer() && !matches!(self, Error::Encode(_) | Error::Closed { .. })
    }

    pub(crate) fn from_request(error: RequestError) -> Error {
        let written = error.written;
        match error.closed {
            None => Error::Timeout { written },
            Some(CloseReason::Local) => Error::Closed { written },
            Some(CloseReason::ConnectionLost) => Error::ConnectionLost { written },
            Some(reason) => Error::Protocol { reason, written },
        }
    }

    pub(crate) fn from_send(error: SendError) -> Error {
        match error {
            SendError::Closed => Error::ConnectionLost { written: false },
            SendError::TooManyWaiters { .. } => Error::TooManyInFlight,
            SendError::TransmitFull { .. } => Error::Backpressure,
            SendError::DeadlinePassed => Error::Timeout { written: false },
            SendError::Encode(e) => Error::Encode(e),
            _ => Error::ConnectionLost { written: false },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let written = |w: bool| {
            if w {
                "the request was written and may have reached the server"
            } else {
                "the request was never written"
            }
        };
        match self {
            Error::Timeout { written: w } => write!(f, "timed out ({})", written(*w)),
            Error::ConnectionLost { written: w } => {
                write!(f, "connection lost ({})", written(*w))
            }
            Error::Protocol { reason, written: w } => {
                write!(f, "protocol error: {reason} ({})", written(*w))
            }
            Error::Closed { written: w } => write!(f, "client closed ({})", written(*w)),
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::Unavailable { retry_in } => write!(
                f,
                "no connection available; next reconnect attempt in {} ms",
                retry_in.as_millis()
            ),
            Error::TooManyInFlight => f.write_str("too many calls in flight on the connection"),
            Error::Backpressure => f.write_str("too many bytes waiting to be written"),
            Error::Encode(e) => write!(f, "cannot encode request: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) => Some(e),
            Error::Encode(e) => Some(e),
            _ => None,
        }
    }
}
