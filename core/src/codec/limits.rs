//! The bounds on what a peer may make the decoder hold, shared by the frame decoder and both
//! header codecs (which is why they live apart from all three).

/// The largest frame Java accepts by default, length prefix included: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Bounds on what a peer may make the decoder hold. Every one is checked before the memory it
/// guards is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Limits {
    /// Largest frame, length prefix included (Java's `frameMaxLength`). Also bounds what
    /// [`Codec::encode`](crate::Codec::encode) writes, since a peer with the same limit would reject more.
    pub max_frame_len: u32,
    /// Most extension fields in one header.
    pub max_ext_fields: usize,
    /// Longest remark, extension key or extension value, in bytes.
    pub max_string_len: usize,
    /// Deepest nesting of JSON values (the header object is level 1); only unknown keys nest.
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_ext_fields: 1024,
            max_string_len: 4 * 1024 * 1024,
            max_json_depth: 32,
        }
    }
}
