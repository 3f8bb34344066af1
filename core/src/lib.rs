//! Sans-IO core of the Apache RocketMQ remoting protocol.
//!
//! `remora-core` owns every decision that needs no socket and no clock:
//! - the codec: [`Command`] is what one frame carries, and [`Codec`] turns a read buffer into
//!   commands and commands into bytes, with a JSON ([`json`]) or ROCKETMQ binary ([`binary`])
//!   header;
//! - the connection machine: [`Connection`] pairs responses with requests, keeps deadlines,
//!   answers for an overloaded server, closes a connection idle past its idle timeout, and fails
//!   every pending request exactly once when the connection ends. Drivers feed it bytes and
//!   [`Instant`]s; see its docs for the drain order.
//!   It bounds what a peer can make it hold: read buffers grow with the bytes that arrived, and
//!   [`Connection::wants_read`] turns false while a peer leaves its answers unread;
//! - the server budget: [`Budget`] is shared by a server's connections and decides when new
//!   connections are refused and new requests answered `SYSTEM_BUSY`.
//!
//! # Contract
//! - Decoding never panics and never allocates on the strength of an unchecked length: the frame
//!   length is compared with [`Limits::max_frame_len`] on the 4-byte prefix, every header length
//!   with the bytes that are really there.
//! - Partial input is [`Decoded::Incomplete`], not an error. Any [`DecodeError`] means the stream
//!   is corrupt and the connection should be closed, as Java does.
//! - Decoding a frame allocates nothing: a [`Command`] keeps the frame as one `Bytes` and reads
//!   its remark, extension fields and body from it in place (JSON escapes are undone in the read
//!   buffer, which the frame owns by then).
//! - Encoding writes straight into the caller's [`bytes::BufMut`], length prefix included, or
//!   writes nothing and returns an [`EncodeError`].
//!
//! The folders are the layers: [`codec`] (frames and headers) under [`conn`] (one connection's
//! requests, responses and deadlines) under [`resilience`] (several endpoints: retries, hedging,
//! breakers, balancing, the pool policy). [`acl`] signs and verifies requests.
//!
//! `#![no_std]` with `alloc`. The `std` feature (on by default) adds only
//! `From<std::io::Error>` for [`ConnectError`]; with every feature the core stays pure: no clock,
//! no environment, no DNS, no caught panics. `serde` derives the configuration types. [`rand`] is
//! the one small seeded generator drivers and simulations share.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use remora_core::{Codec, Command, Decoded, SerializeType};
//!
//! let codec = Codec::default();
//! let request = Command::request(105).with_opaque(1).with_ext("topic", "orders");
//! let mut wire = BytesMut::new();
//! codec.encode_as(&request, SerializeType::RocketMq, &mut wire).unwrap();
//!
//! // The peer reads the frame back, maybe in pieces.
//! let mut read_buf = wire.split_to(5);
//! assert_eq!(codec.decode(&mut read_buf).unwrap(), Decoded::Incomplete { needed: wire.len() });
//! read_buf.unsplit(wire);
//! let Decoded::Command(got) = codec.decode(&mut read_buf).unwrap() else { unreachable!() };
//! assert_eq!(got.ext("topic").unwrap(), "orders");
//!
//! let response = got.response(0).with_body(&b"route data"[..]);
//! assert!(response.is_response() && response.opaque == 1);
//! ```
#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod acl;
pub mod codec;
pub mod conn;
pub mod rand;
pub mod resilience;
pub mod route;
mod time;

pub use codec::{binary, codes, encoded, error, json};
pub use resilience::{backoff, pool};

pub use codec::command::{
    Command, Ext, ExtFields, ExtIter, HeaderStr, LanguageCode, SerializeType, DEFAULT_VERSION,
    FLAG_ONEWAY, FLAG_RESPONSE,
};
pub use codec::encoded::Encoded;
pub use codec::error::{BinaryField, DecodeError, EncodeError, JsonErrorKind};
pub use codec::frame::{Codec, Decoded, PREFIX_LEN};
pub use codec::limits::{Limits, DEFAULT_MAX_FRAME_LEN};
pub use conn::budget::{Account, Budget, BudgetConfig, Refusal, Snapshot};
pub use conn::call::{CallError, ConnectError, Handler, Hook, NotSupported};
pub use conn::connection::{
    CloseReason, Config, Connection, Event, IncomingRequest, RequestError, RequestId, SendError,
    Stats, COALESCE_BELOW, READ_STEP,
};
pub use conn::outgoing::Outgoing;
pub use time::Instant;

// A decoded command moves from the decoder to the caller through these; each may be at most 16
// bytes larger than the 64-byte `Command` (asserted beside it), so a move stays cheap.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Decoded>() <= size_of::<Command>() + 16);
    assert!(size_of::<Result<Decoded, DecodeError>>() <= size_of::<Command>() + 16);
    assert!(size_of::<Event>() <= size_of::<Command>() + 16);
    // The machine's event queue is a ring of `Option<Event>` slots: the option costs nothing.
    assert!(size_of::<Option<Event>>() == size_of::<Event>());
    assert!(size_of::<Result<Command, RequestError>>() <= size_of::<Command>() + 16);
    assert!(size_of::<Result<Command, CallError>>() <= size_of::<Command>() + 16);
};
