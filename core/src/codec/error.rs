//! Codec errors. Every [`DecodeError`] means the byte stream is corrupt: the connection that
//! carried it must be closed (Java closes without answering). [`EncodeError`] is the caller's.

use core::fmt;

/// What was wrong with an incoming frame.
///
/// Offsets are byte positions inside the header (0 = first header byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix is below 4, too small to hold the marker word.
    FrameTooShort {
        /// The length prefix.
        length: u32,
    },
    /// The length prefix is negative when read as Java's signed `int`.
    NegativeLength {
        /// The length prefix, as Java reads it.
        length: i32,
    },
    /// The frame (prefix included) is larger than the configured limit.
    FrameTooLarge {
        /// Total frame bytes the prefix announces, prefix included.
        frame_len: u64,
        /// The configured limit, prefix included.
        max: u32,
    },
    /// The marker's header length is larger than the bytes after the marker.
    HeaderOverrunsFrame {
        /// Header length from the marker.
        header_len: u32,
        /// Bytes after the marker.
        available: u32,
    },
    /// [`Codec::decode_frame`](crate::Codec::decode_frame) was given more or fewer bytes than the
    /// frame's length prefix announces (a stream decoder would wait for the rest instead).
    FrameLengthMismatch {
        /// Total frame bytes the prefix announces, prefix included (the bytes given, when there
        /// were not even 8).
        frame_len: u64,
        /// Bytes given.
        actual: usize,
    },
    /// The marker's type byte is neither 0 (JSON) nor 1 (ROCKETMQ).
    UnknownSerializeType {
        /// The type byte.
        ty: u8,
    },
    /// The JSON header is malformed.
    Json {
        /// Where in the header.
        offset: usize,
        /// What was wrong.
        kind: JsonErrorKind,
    },
    /// A ROCKETMQ binary header field is cut off by the end of the header, or its length is
    /// negative.
    BinaryOverrun {
        /// Which field.
        field: BinaryField,
        /// Where the field starts in the header.
        offset: usize,
    },
    /// A ROCKETMQ binary header string is not UTF-8.
    BinaryInvalidUtf8 {
        /// Which field.
        field: BinaryField,
        /// Where the string starts in the header.
        offset: usize,
    },
    /// More extension fields than the configured limit.
    TooManyExtFields {
        /// The configured limit.
        max: usize,
    },
    /// A header string longer than the configured limit.
    StringTooLong {
        /// Where the string starts in the header.
        offset: usize,
        /// The configured limit, in bytes.
        max: usize,
    },
}

/// What was wrong inside a JSON header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// The header ended inside a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue what was expected.
    UnexpectedByte {
        /// The byte found.
        found: u8,
        /// What the grammar expected there.
        expected: &'static str,
    },
    /// A backslash escape that JSON does not define, or a `\u` escape naming a lone surrogate.
    InvalidEscape,
    /// A string that is not UTF-8.
    InvalidUtf8,
    /// A number field that is not an integer within `i32`.
    NumberOutOfRange,
    /// A known field holding the wrong kind of value (e.g. `"code":"ten"`).
    WrongType {
        /// The field's JSON key.
        field: &'static str,
    },
    /// Values nested deeper than the configured limit.
    TooDeep,
    /// Something other than whitespace after the closing brace.
    TrailingCharacters,
}

/// The ROCKETMQ binary header fields, for error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BinaryField {
    /// The 13-byte fixed part: code, language, version, opaque, flag.
    Fixed,
    /// The remark's 4-byte length.
    RemarkLength,
    /// The remark's bytes.
    Remark,
    /// The extension block's 4-byte length.
    ExtLength,
    /// The extension block (its length runs past the header).
    Ext,
    /// An extension key's 2-byte length.
    ExtKeyLength,
    /// An extension key's bytes.
    ExtKey,
    /// An extension value's 4-byte length.
    ExtValueLength,
    /// An extension value's bytes.
    ExtValue,
}

/// Why a command could not be encoded. Nothing was written when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The frame would be larger than the configured limit (what the peer accepts).
    FrameTooLarge {
        /// Total frame bytes, prefix included.
        frame_len: u64,
        /// The configured limit, prefix included.
        max: u32,
    },
    /// The header would not fit the marker's 24-bit length.
    HeaderTooLarge {
        /// Header bytes.
        header_len: usize,
    },
    /// A ROCKETMQ extension key longer than its 16-bit length field allows.
    ExtKeyTooLong {
        /// Key bytes.
        len: usize,
    },
    /// The destination buffer has less room than the frame needs.
    BufferTooSmall {
        /// Frame bytes.
        needed: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::FrameTooShort { length } => {
                write!(f, "frame length {length} is below the minimum of 4")
            }
            DecodeError::NegativeLength { length } => write!(f, "negative frame length {length}"),
            DecodeError::FrameTooLarge { frame_len, max } => {
                write!(f, "frame of {frame_len} bytes is over the limit of {max}")
            }
            DecodeError::HeaderOverrunsFrame {
                header_len,
                available,
            } => write!(
                f,
                "header length {header_len} overruns the frame ({available} bytes after the marker)"
            ),
            DecodeError::FrameLengthMismatch { frame_len, actual } => write!(
                f,
                "frame announces {frame_len} bytes but {actual} were given"
            ),
            DecodeError::UnknownSerializeType { ty } => {
                write!(f, "unknown header serialize type {ty}")
            }
            DecodeError::Json { offset, kind } => {
                write!(f, "malformed JSON header at byte {offset}: {kind}")
            }
            DecodeError::BinaryOverrun { field, offset } => write!(
                f,
                "ROCKETMQ header field {field:?} at byte {offset} overruns the header or has a negative length"
            ),
            DecodeError::BinaryInvalidUtf8 { field, offset } => write!(
                f,
                "ROCKETMQ header field {field:?} at byte {offset} is not UTF-8"
            ),
            DecodeError::TooManyExtFields { max } => {
                write!(f, "more than {max} extension fields")
            }
            DecodeError::StringTooLong { offset, max } => write!(
                f,
                "header string at byte {offset} is longer than the limit of {max} bytes"
            ),
        }
    }
}

impl fmt::Display for JsonErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            JsonErrorKind::UnexpectedEnd => f.write_str("unexpected end of header"),
            JsonErrorKind::UnexpectedByte { found, expected } => {
                write!(f, "unexpected byte 0x{found:02x}, expected {expected}")
            }
            JsonErrorKind::InvalidEscape => f.write_str("invalid escape"),
            JsonErrorKind::InvalidUtf8 => f.write_str("string is not UTF-8"),
            JsonErrorKind::NumberOutOfRange => f.write_str("number is not an integer within i32"),
            JsonErrorKind::WrongType { field } => write!(f, "field {field:?} has the wrong type"),
            JsonErrorKind::TooDeep => f.write_str("values nested too deep"),
            JsonErrorKind::TrailingCharacters => f.write_str("bytes after the closing brace"),
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::FrameTooLarge { frame_len, max } => {
                write!(f, "frame of {frame_len} bytes is over the limit of {max}")
            }
            EncodeError::HeaderTooLarge { header_len } => write!(
                f,
                "header of {header_len} bytes does not fit the 24-bit header length"
            ),
            EncodeError::ExtKeyTooLong { len } => write!(
                f,
                "extension key of {len} bytes does not fit the ROCKETMQ 16-bit key length"
            ),
            EncodeError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "destination buffer has no room for a {needed}-byte frame"
                )
            }
        }
    }
}

impl core::error::Error for DecodeError {}
impl core::error::Error for EncodeError {}
