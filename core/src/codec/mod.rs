//! The codec layer: what one frame carries ([`Command`](crate::Command)), how frames are cut
//! from a byte stream ([`Codec`](crate::Codec)), the two header encodings ([`json`], [`binary`])
//! and the bounds every one of them checks ([`Limits`](crate::Limits)). Nothing here knows about
//! requests in flight; that is [`crate::conn`].
//!
//! Dependencies point one way: `encoded` → `frame` → `json`, `binary` → `command`, `limits`,
//! `sink`, `error`.

pub mod binary;
pub mod codes;
pub(crate) mod command;
pub mod encoded;
pub mod error;
pub(crate) mod frame;
pub mod json;
pub(crate) mod limits;
pub(crate) mod scan;
pub(crate) mod sink;
