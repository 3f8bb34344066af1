//! A request encoded once and sent again (a retry, a hedge, another endpoint) with only its
//! opaque rewritten in place, as RocketMQ clients re-send the same request.
//!
//! The opaque is encoded as a placeholder of the widest value (`i32::MIN`): four bytes at a fixed
//! place in a ROCKETMQ header; eleven characters after `"opaque":` in a JSON header, which a
//! shorter number fills with trailing spaces (whitespace JSON allows), so the frame's length
//! never changes.

use bytes::{BufMut, Bytes, BytesMut};

use super::command::{Command, SerializeType, FLAG_ONEWAY, FLAG_RESPONSE};
use super::error::EncodeError;
use super::frame::{Codec, PREFIX_LEN};

const PLACEHOLDER: i32 = i32::MIN;
/// `-2147483648`: the widest decimal opaque.
const JSON_WIDTH: usize = 11;
const JSON_KEY: &[u8] = b"\"opaque\":-2147483648";
/// In a ROCKETMQ header: code (2), language (1), version (2), then the opaque.
const BINARY_OFFSET: usize = PREFIX_LEN + 5;

/// A request frame encoded once; [`Encoded::write`] appends it with a given opaque. Cheap to
/// clone (the bytes are shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    frame: Bytes,
    /// Where the opaque starts, and whether it is JSON text (else 4 big-endian bytes).
    opaque_at: usize,
    json: bool,
    code: i32,
    ty: SerializeType,
}

impl Encoded {
    /// Encodes `cmd` as a request (response and oneway bits cleared) with its header as `ty`;
    /// its opaque is a placeholder each [`Encoded::write`] replaces.
    pub fn request(
        codec: &Codec,
        cmd: &mut Command,
        ty: SerializeType,
    ) -> Result<Self, EncodeError> {
        cmd.opaque = PLACEHOLDER;
        cmd.flag &= !(FLAG_RESPONSE | FLAG_ONEWAY);
        let mut out = BytesMut::new();
        codec.encode_into(cmd, ty, &mut out)?;
        let (opaque_at, json) = match ty {
            SerializeType::RocketMq => (BINARY_OFFSET, false),
            SerializeType::Json => {
                let header_len = u32::from_be_bytes([0, out[5], out[6], out[7]]) as usize;
                let header = &out[PREFIX_LEN..PREFIX_LEN + header_len];
                // The only unescaped `"opaque":` followed by a number is the top-level key.
                let at = header
                    .windows(JSON_KEY.len())
                    .position(|w| w == JSON_KEY)
                    .expect("the JSON encoder writes the opaque key");
                (PREFIX_LEN + at + JSON_KEY.len() - JSON_WIDTH, true)
            }
        };
        Ok(Encoded {
            frame: out.freeze(),
            opaque_at,
            json,
            code: cmd.code,
            ty,
        })
    }

    /// The request's code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// How its header is encoded.
    pub fn serialize_type(&self) -> SerializeType {
        self.ty
    }

    /// The frame's bytes (with the placeholder opaque).
    pub fn as_bytes(&self) -> &[u8] {
        &self.frame
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether the frame is empty (never, for an encoded request).
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// Where the body starts in the frame: after the length prefix and the header.
    fn body_start(&self) -> usize {
        let f = &self.frame;
        PREFIX_LEN + u32::from_be_bytes([0, f[5], f[6], f[7]]) as usize
    }

    /// The body's length (the frame's bytes after its header).
    pub fn body_len(&self) -> usize {
        self.frame.len() - self.body_start()
    }

    /// Where in the frame the opaque is, and how many bytes it spans.
    pub fn opaque_span(&self) -> core::ops::Range<usize> {
        let width = if self.json { JSON_WIDTH } else { 4 };
        self.opaque_at..self.opaque_at + width
    }

    /// Appends the frame to `out` with `opaque` written in place of the placeholder.
    pub fn write(&self, opaque: i32, out: &mut BytesMut) {
        self.write_part(opaque, self.frame.len(), out);
    }

    /// Appends the frame's prefix and header to `out` with `opaque` written in place of the
    /// placeholder, and returns its body: the frame's own memory, shared, not copied. Written
    /// after the header, the two are exactly what [`Encoded::write`] appends.
    pub fn write_head(&self, opaque: i32, out: &mut BytesMut) -> Bytes {
        let body_start = self.body_start();
        self.write_part(opaque, body_start, out);
        self.frame.slice(body_start..)
    }

    /// Appends the frame's first `len` bytes (which hold the opaque) with `opaque` in place.
    fn write_part(&self, opaque: i32, len: usize, out: &mut BytesMut) {
        let start = out.len();
        out.put_slice(&self.frame[..len]);
        let span = self.opaque_span();
        let field = &mut out[start + span.start..start + span.end];
        if self.json {
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(opaque).as_bytes();
            field.fill(b' ');
            field[..digits.len()].copy_from_slice(digits);
        } else {
            field.copy_from_slice(&opaque.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::Decoded;

    #[test]
    fn every_copy_differs_only_in_the_opaque_and_decodes_as_the_request() {
        let codec = Codec::default();
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            let mut cmd = Command::request(310)
                .with_ext("topic", "orders")
                .with_ext("opaque", "-2147483648")
                .with_remark("\"opaque\":-2147483648")
                .with_body(&b"payload"[..]);
            let encoded = Encoded::request(&codec, &mut cmd, ty).unwrap();
            let span = encoded.opaque_span();
            let mut copies = alloc::vec::Vec::new();
            for opaque in [0, 7, -1, i32::MAX, i32::MIN, 123_456] {
                let mut out = BytesMut::new();
                encoded.write(opaque, &mut out);
                let Decoded::Command(got) = codec.decode(&mut out.clone()).unwrap() else {
                    panic!("a whole frame")
                };
                assert_eq!(got.opaque, opaque, "{ty:?}");
                assert_eq!((got.code, got.body()), (310, cmd.body()));
                assert_eq!(got.ext_fields().get("topic"), Some("orders"));
                copies.push(out);
            }
            for opaque in [0, -5, i32::MIN] {
                let (mut whole, mut split) = (BytesMut::new(), BytesMut::new());
                encoded.write(opaque, &mut whole);
                let body = encoded.write_head(opaque, &mut split);
                assert_eq!(&body[..], cmd.body(), "{ty:?}");
                assert_eq!(encoded.body_len(), cmd.body().len());
                split.extend_from_slice(&body);
                assert_eq!(split, whole, "{ty:?}");
            }
            for pair in copies.windows(2) {
                assert_eq!(pair[0].len(), pair[1].len());
                for (i, (a, b)) in pair[0].iter().zip(pair[1].iter()).enumerate() {
                    assert!(a == b || span.contains(&i), "{ty:?}: byte {i} differs");
                }
            }
        }
    }
}
