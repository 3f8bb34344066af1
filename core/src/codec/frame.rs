//! Framing: the length prefix, the marker word, and the [`Codec`] that turns a read buffer into
//! commands and commands into bytes.

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use nom::number::streaming::be_u32;

use super::binary;
use super::command::{Command, Fixed, SerializeType};
use super::error::{DecodeError, EncodeError};
use super::json;
use super::limits::Limits;
use super::sink::{BufSink, Raw, WindowSink, SLACK};

/// What [`Codec::decode`] found at the front of the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, removed from the buffer.
    Command(Command),
    /// The buffer holds only part of a frame; at least `needed` more bytes must arrive. Nothing was
    /// removed. The frame's announced length has passed the limit check, so reserving `needed` is
    /// safe.
    Incomplete {
        /// Bytes still missing (at least 1).
        needed: usize,
    },
}

/// Frame encoder and streaming decoder. Stateless apart from its [`Limits`]; cheap to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Codec {
    limits: Limits,
}

/// Bytes before the header: the length prefix and the marker word.
pub const PREFIX_LEN: usize = 8;

/// A copy of `fixed` made field by field. The general JSON parser's result (returned through
/// memory) is copied so before it meets the fast parser's: copied whole, the compiler had the
/// general parser write straight into the slot where the two meet, and the fast parser's
/// result went through that slot too, stored field by field and read back in 8-byte words (a
/// store-forwarding stall on every JSON decode).
#[inline(always)]
fn field_by_field(fixed: &Fixed) -> Fixed {
    Fixed {
        code: fixed.code,
        language: fixed.language,
        version: fixed.version,
        opaque: fixed.opaque,
        flag: fixed.flag,
        has_remark: fixed.has_remark,
        has_ext: fixed.has_ext,
    }
}

impl Codec {
    /// A codec enforcing `limits`.
    pub const fn new(limits: Limits) -> Self {
        Codec { limits }
    }

    /// The limits this codec enforces.
    pub const fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes the first frame off `buf`.
    ///
    /// The length prefix is checked against the limit as soon as its 4 bytes are present, and the
    /// marker as soon as its 4 are, so a hostile peer is refused before the rest of its frame is
    /// waited for. The body and unescaped header strings are zero-copy slices of `buf`'s memory.
    ///
    /// An error means the stream is corrupt and the connection must be closed; `buf` is left as
    /// it was.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        self.decode_from::<false>(buf, &mut 0)
    }

    /// [`Codec::decode`] of the frame that starts `*pos` bytes into `buf`, for a reader that
    /// takes a run of frames off one buffer without advancing it past each: the `*pos` bytes
    /// before the frame are consumed (nothing reads them any more).
    ///
    /// A frame the command needs nothing of later (no body, remark or extension field) is
    /// skipped by moving `*pos` past it, `buf` untouched: the caller advances `buf` (or clears
    /// it) once for the whole run. A frame the command keeps is split off `buf` together with
    /// the consumed bytes before it, and `*pos` is 0 again. `Incomplete` and errors change
    /// neither. `*pos` must be at most `buf.len()`.
    #[inline(always)]
    pub(crate) fn decode_at(
        &self,
        buf: &mut BytesMut,
        pos: &mut usize,
    ) -> Result<Decoded, DecodeError> {
        self.decode_from::<true>(buf, pos)
    }

    /// [`Codec::decode_at`] when `SKIP_IN_PLACE`, else [`Codec::decode`] (`*pos` is 0 and a
    /// skipped frame is advanced past at once).
    #[inline(always)]
    fn decode_from<const SKIP_IN_PLACE: bool>(
        &self,
        buf: &mut BytesMut,
        pos: &mut usize,
    ) -> Result<Decoded, DecodeError> {
        let at = *pos;
        debug_assert!(at <= buf.len());
        let Some(rest) = buf.get_mut(at..) else {
            return self.decode_short(&[]);
        };
        let Some(&[a, b, c, d, m0, m1, m2, m3]) = rest.get(..PREFIX_LEN) else {
            return self.decode_short(rest);
        };
        let length = u32::from_be_bytes([a, b, c, d]);
        let frame_len = self.check_length(length)?;
        let (ty, header_len) = check_marker(length, [m0, m1, m2, m3])?;
        let Some(frame) = rest.get_mut(..frame_len) else {
            return Ok(Decoded::Incomplete {
                needed: frame_len - rest.len(),
            });
        };
        // Checked where it lies: an error leaves `buf` untouched. (`check_marker` has the header
        // within the frame: the index cannot fail.)
        let header = &mut frame[PREFIX_LEN..PREFIX_LEN + header_len];
        let (fixed, ext_at) = match ty {
            SerializeType::RocketMq => binary::parse(header, &self.limits)?,
            SerializeType::Json => {
                // Rewritten for reading (escapes undone, `extFields` compacted) where it lies:
                // the read buffer is ours to change, and whatever else shares its memory lies
                // outside this frame. No copy.
                match json::parse_in_place_fast(header, &self.limits)? {
                    Some(found) => found,
                    None => {
                        let (fixed, ext_at) = json::parse_general_in_place(header, &self.limits)?;
                        (field_by_field(&fixed), ext_at)
                    }
                }
            }
        };
        if frame_len != PREFIX_LEN + header_len || fixed.has_remark || fixed.has_ext {
            let mut frame = buf.split_to(at + frame_len).freeze();
            if at != 0 {
                // The consumed frames before it: dropped from the handle, not the buffer
                // (a `Bytes` advance is two stores, no reference count).
                frame.advance(at);
            }
            *pos = 0;
            Ok(Decoded::Command(Command::decoded_frame(
                fixed, ty, frame, ext_at,
            )))
        } else {
            // Nothing to read from the frame later: skip it instead of splitting it off
            // (no reference count to take and drop).
            if SKIP_IN_PLACE {
                *pos = at + frame_len;
            } else {
                buf.advance(frame_len);
            }
            Ok(Decoded::Command(Command::bare(fixed, ty)))
        }
    }

    /// [`Codec::decode`] of a buffer shorter than the prefix: the length is checked as soon as
    /// its 4 bytes are there.
    #[cold]
    fn decode_short(&self, buf: &[u8]) -> Result<Decoded, DecodeError> {
        let length = match be_u32::<&[u8], nom::error::Error<&[u8]>>(buf) {
            Ok((_, length)) => length,
            Err(nom::Err::Incomplete(needed)) => {
                let needed = match needed {
                    nom::Needed::Size(n) => n.get(),
                    nom::Needed::Unknown => 4 - buf.len(),
                };
                return Ok(Decoded::Incomplete { needed });
            }
            // A streaming `be_u32` fails only with `Incomplete`; keep a typed answer regardless.
            Err(_) => return Ok(Decoded::Incomplete { needed: 1 }),
        };
        let frame_len = self.check_length(length)?;
        Ok(Decoded::Incomplete {
            needed: frame_len.saturating_sub(buf.len()).max(1),
        })
    }

    /// Decodes one frame that is already in memory: `frame` must hold exactly the bytes its
    /// length prefix announces, prefix included. Use [`Codec::decode`] for streams.
    ///
    /// The command shares `frame`'s memory, except that a JSON header whose strings hold
    /// escapes is copied once to unescape them ([`Codec::decode`] unescapes in place).
    pub fn decode_frame(&self, frame: &Bytes) -> Result<Command, DecodeError> {
        let checked = self.check_frame(frame)?;
        let buf = if checked.escapes.any() {
            let mut owned = BytesMut::from(&frame[..]);
            let header_end = PREFIX_LEN + checked.header_len;
            checked.escapes.rewrite(&mut owned[PREFIX_LEN..header_end]);
            owned.freeze()
        } else {
            frame.clone()
        };
        Ok(checked.command(buf))
    }

    /// Checks a whole frame in memory: prefix, marker, and the header, completely.
    fn check_frame(&self, frame: &[u8]) -> Result<Checked, DecodeError> {
        let mismatch = |frame_len: usize| DecodeError::FrameLengthMismatch {
            frame_len: frame_len as u64,
            actual: frame.len(),
        };
        let Some(&[a, b, c, d]) = frame.get(..4) else {
            return Err(mismatch(frame.len()));
        };
        let length = u32::from_be_bytes([a, b, c, d]);
        let frame_len = self.check_length(length)?;
        let Some(prefix) = frame.get(..PREFIX_LEN) else {
            return Err(mismatch(frame_len));
        };
        let (ty, header_len) = check_marker(length, [prefix[4], prefix[5], prefix[6], prefix[7]])?;
        if frame_len != frame.len() {
            return Err(mismatch(frame_len));
        }
        self.check_header(ty, &frame[PREFIX_LEN..PREFIX_LEN + header_len])
    }

    /// Checks a header completely.
    #[inline]
    fn check_header(&self, ty: SerializeType, header: &[u8]) -> Result<Checked, DecodeError> {
        let header_len = header.len();
        Ok(match ty {
            SerializeType::Json => {
                let parsed = json::parse(header, &self.limits)?;
                Checked {
                    ty,
                    header_len,
                    fixed: parsed.fixed,
                    ext_at: parsed.ext_at,
                    escapes: parsed.escapes,
                }
            }
            SerializeType::RocketMq => {
                let (fixed, ext_at) = binary::parse(header, &self.limits)?;
                Checked {
                    ty,
                    header_len,
                    fixed,
                    ext_at,
                    escapes: json::Escapes::default(),
                }
            }
        })
    }

    /// Checks a length prefix; returns the whole frame's length.
    fn check_length(&self, length: u32) -> Result<usize, DecodeError> {
        if (length as i32) < 0 {
            return Err(DecodeError::NegativeLength {
                length: length as i32,
            });
        }
        if length < 4 {
            return Err(DecodeError::FrameTooShort { length });
        }
        let frame_len = u64::from(length) + 4;
        if frame_len > u64::from(self.limits.max_frame_len) {
            return Err(DecodeError::FrameTooLarge {
                frame_len,
                max: self.limits.max_frame_len,
            });
        }
        Ok(frame_len as usize)
    }

    /// Writes `cmd` as one frame, length prefix included, with its own [`Command::serialize_type`].
    pub fn encode(&self, cmd: &Command, dst: &mut impl BufMut) -> Result<(), EncodeError> {
        self.encode_as(cmd, cmd.serialize_type, dst)
    }

    /// Writes `cmd` as one frame with the header serialized as `ty` (a connection's choice).
    ///
    /// Nothing is written when an error is returned. In a JSON header,
    /// `serializeTypeCurrentRPC` says `ty`. When `dst` already has room for the frame's prefix and
    /// header (a `BytesMut` with spare capacity), the header is written once, straight into it;
    /// otherwise its length is computed first.
    pub fn encode_as(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut impl BufMut,
    ) -> Result<(), EncodeError> {
        self.encode_parts(cmd, ty, dst, true)
    }

    /// Writes `cmd`'s frame up to its body: the length prefix (which counts the body) and the
    /// header serialized as `ty`. The caller sends `cmd.body()` right after, from its own memory
    /// (how a connection sends a large body without copying it). Nothing is written on error.
    pub fn encode_head_into(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        dst.reserve(RESERVE_FOR_HEADER);
        self.encode_parts(cmd, ty, dst, false)
    }

    #[inline]
    fn encode_parts(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut impl BufMut,
        with_body: bool,
    ) -> Result<(), EncodeError> {
        if ty == SerializeType::RocketMq && cmd.is_bare() {
            self.encode_bare_rocketmq(cmd, dst, with_body)
        } else {
            self.encode_general(cmd, ty, dst, with_body)
        }
    }

    #[inline(never)]
    fn encode_general(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut impl BufMut,
        with_body: bool,
    ) -> Result<(), EncodeError> {
        self.encode_general_inline(cmd, ty, dst, with_body)
    }

    /// [`Codec::encode_general`]'s body, for [`Codec::encode_general_into`] to have it without
    /// a second call.
    #[inline(always)]
    fn encode_general_inline(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut impl BufMut,
        with_body: bool,
    ) -> Result<(), EncodeError> {
        if ty == SerializeType::Json
            && cmd.is_bare()
            && self.encode_bare_json_in_place(cmd, dst, with_body)?
        {
            return Ok(());
        }
        let body = cmd.body();
        if let Some(written) = self.encode_in_place(cmd, body.len(), ty, dst, with_body)? {
            // SAFETY: `encode_in_place` initialised the first `written` bytes of
            // `dst.chunk_mut()` (prefix and header) and nothing after; committing exactly those
            // is what `advance_mut` requires. `tests::in_place_and_two_pass_encodings_agree`
            // compares every byte with the two-pass path.
            unsafe { dst.advance_mut(written) };
            if with_body && !body.is_empty() {
                dst.put_slice(body);
            }
            return Ok(());
        }
        let ext_len = match ty {
            SerializeType::RocketMq => binary::checked_ext_len(cmd)?,
            SerializeType::Json => 0,
        };
        let header_len = self.checked_header_len(cmd, ty)?;
        let frame_len = PREFIX_LEN + header_len + cmd.body().len();
        fits(
            dst.remaining_mut(),
            PREFIX_LEN + header_len,
            frame_len,
            with_body,
        )?;
        dst.put_u32((frame_len - 4) as u32);
        dst.put_u32(u32::from(ty.code()) << 24 | header_len as u32);
        let mut out = BufSink(dst);
        match ty {
            SerializeType::Json => json::write_header(cmd, ty, &mut out),
            SerializeType::RocketMq => binary::write_header(cmd, ext_len, &mut out),
        }
        if with_body {
            dst.put_slice(cmd.body());
        }
        Ok(())
    }

    /// A ROCKETMQ frame of a command with no remark and no extension fields (a heartbeat, most
    /// responses): prefix and header are 29 bytes known up front.
    fn encode_bare_rocketmq(
        &self,
        cmd: &Command,
        dst: &mut impl BufMut,
        with_body: bool,
    ) -> Result<(), EncodeError> {
        let body = cmd.body();
        self.check_lengths(BARE_HEADER_LEN, body.len())?;
        let frame_len = PREFIX_LEN + BARE_HEADER_LEN + body.len();
        fits(
            dst.remaining_mut(),
            PREFIX_LEN + BARE_HEADER_LEN,
            frame_len,
            with_body,
        )?;
        let chunk = dst.chunk_mut();
        if chunk.len() >= BARE_FRAME_HEAD {
            BareHead::new(cmd, cmd.opaque, cmd.flag, frame_len).write_to(chunk);
            // SAFETY: `write_to` initialised the first `BARE_FRAME_HEAD` bytes of
            // `dst.chunk_mut()`; committing exactly those is what `advance_mut` requires.
            // `tests::bare_rocketmq_frames_match_the_general_writer` compares every byte with
            // the general path, for a buffer with room and one without.
            unsafe { dst.advance_mut(BARE_FRAME_HEAD) };
        } else {
            put_bare_head(cmd, frame_len, dst);
        }
        if with_body && !body.is_empty() {
            dst.put_slice(body);
        }
        Ok(())
    }

    /// Writes prefix and header into `dst`'s current chunk without committing them; returns how
    /// many bytes were written, or `None` if the chunk is too small (nothing usable written).
    #[inline(always)]
    fn encode_in_place(
        &self,
        cmd: &Command,
        body_len: usize,
        ty: SerializeType,
        dst: &mut impl BufMut,
        with_body: bool,
    ) -> Result<Option<usize>, EncodeError> {
        let remaining = dst.remaining_mut();
        let chunk = dst.chunk_mut();
        if chunk.len() < PREFIX_LEN + 32 {
            return Ok(None);
        }
        let mut out = WindowSink::new(chunk, PREFIX_LEN);
        match ty {
            SerializeType::Json => json::write_header(cmd, ty, &mut out),
            SerializeType::RocketMq => binary::write_header_in_place(cmd, &mut out)?,
        }
        if out.overflow {
            return Ok(None);
        }
        let written = out.pos;
        let header_len = written - PREFIX_LEN;
        self.check_lengths(header_len, body_len)?;
        let frame_len = written + body_len;
        fits(remaining, written, frame_len, with_body)?;
        let prefix = prefix_word(frame_len, ty, header_len).to_be_bytes();
        out.put_prefix(prefix);
        Ok(Some(written))
    }

    /// Like [`Codec::encode_as`] into a `BytesMut`, reserving room first so the header is written
    /// in one pass.
    ///
    /// A ROCKETMQ frame of a command with no remark and no fields (most responses, heartbeats) is
    /// written inline, its 29 bytes of prefix and header known up front; anything else calls
    /// the general writer.
    #[inline]
    pub fn encode_into(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if ty == SerializeType::RocketMq && cmd.is_bare() {
            self.encode_bare_rocketmq_into(cmd, dst)
        } else {
            self.encode_general_into(cmd, ty, dst)
        }
    }

    /// Prefix and header of a JSON frame for `cmd`, which has no remark and no extension
    /// fields, stored through `raw` (room for [`BARE_JSON_HEAD_ROOM`] bytes and SLACK, not yet
    /// committed): the general writer's bytes, stored part after part with no room check and
    /// no entry machinery, for a body of `body_len` bytes. Returns their length; the frame
    /// limit's refusal otherwise.
    #[inline(always)]
    fn bare_json_head(
        &self,
        cmd: &Command,
        body_len: usize,
        raw: Raw,
    ) -> Result<usize, EncodeError> {
        debug_assert!(cmd.is_bare());
        let ty = SerializeType::Json;
        // SAFETY: `raw` has room for PREFIX_LEN + BARE_MAX_LEN bytes and SLACK.
        let end =
            unsafe { json::write_bare_header(raw, PREFIX_LEN, cmd, cmd.flag, cmd.opaque, ty) };
        let frame_len = end + body_len;
        self.check_frame_len(frame_len)?;
        let header_len = end - PREFIX_LEN;
        let prefix = prefix_word(frame_len, ty, header_len).to_be_bytes();
        // SAFETY: the first 8 bytes of the room.
        unsafe { raw.store(0, prefix) };
        Ok(end)
    }

    /// [`Codec::encode_into`] of a JSON frame for `cmd`, which has no remark and no extension
    /// fields ([`Codec::bare_json_head`] into room reserved once). Nothing is written on error.
    #[inline(always)]
    fn encode_bare_json_into(&self, cmd: &Command, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.reserve(BARE_JSON_HEAD_ROOM + SLACK);
        // After `reserve`, a `BytesMut`'s chunk is all its spare capacity (the head always
        // fits) and it grows for the body (its `remaining_mut` is unbounded).
        if self.encode_bare_json_in_place(cmd, dst, true)? {
            return Ok(());
        }
        self.encode_general(cmd, SerializeType::Json, dst, true)
    }

    /// [`Codec::bare_json_head`] into `dst`'s current chunk when it has the room (else
    /// `Ok(false)`, nothing written, and the general writer takes the frame), then the body
    /// when `with_body`. Its errors are the general writer's; nothing is written on error.
    #[inline(always)]
    fn encode_bare_json_in_place(
        &self,
        cmd: &Command,
        dst: &mut impl BufMut,
        with_body: bool,
    ) -> Result<bool, EncodeError> {
        let remaining = dst.remaining_mut();
        let Some(raw) = Raw::spare(dst, BARE_JSON_HEAD_ROOM) else {
            return Ok(false);
        };
        let body = cmd.body();
        let end = self.bare_json_head(cmd, body.len(), raw)?;
        fits(remaining, end, end + body.len(), with_body)?;
        // SAFETY: `bare_json_head` stored every byte up to `end` in `dst.chunk_mut()`, which
        // is what `advance_mut` requires. `tests::bare_json_frames_match_the_general_writer`
        // compares every byte with the two-pass writer, into slices of every length and into
        // buffers of every capacity, shared or not.
        unsafe { dst.advance_mut(end) };
        if with_body && !body.is_empty() {
            dst.put_slice(body);
        }
        Ok(true)
    }

    /// [`Codec::encode_into`] of a ROCKETMQ frame with no remark and no fields.
    #[inline(always)]
    fn encode_bare_rocketmq_into(
        &self,
        cmd: &Command,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.encode_bare_rocketmq_with(cmd, cmd.opaque, cmd.flag, dst)
    }

    /// [`Codec::encode_into`] of a ROCKETMQ frame for `cmd`, which has no remark and no
    /// extension fields, with `opaque` and `flag` written in place of its own (a connection's
    /// ids for a request), so that the caller need not change (and so copy) the command.
    #[inline(always)]
    pub(crate) fn encode_bare_rocketmq_with(
        &self,
        cmd: &Command,
        opaque: i32,
        flag: i32,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        debug_assert!(cmd.is_bare());
        let body = cmd.body();
        let frame_len = PREFIX_LEN + BARE_HEADER_LEN + body.len();
        self.check_frame_len(frame_len)?;
        dst.reserve(frame_len);
        // After `reserve`, the spare capacity holds the whole frame (`write_to` cannot fail).
        BareHead::new(cmd, opaque, flag, frame_len).write_to(dst.chunk_mut());
        // SAFETY: the line above initialised the first `BARE_FRAME_HEAD` bytes of
        // `dst.chunk_mut()`; committing exactly those is what `advance_mut` requires.
        // `tests::bare_rocketmq_frames_match_the_general_writer` compares every byte with the
        // general path, into an empty, a shared and a roomy buffer.
        unsafe { dst.advance_mut(BARE_FRAME_HEAD) };
        if !body.is_empty() {
            dst.extend_from_slice(body);
        }
        Ok(())
    }

    /// [`Codec::encode_into`] of any other frame (a JSON one with no remark and no fields by
    /// [`Codec::encode_bare_json_into`]).
    #[inline(never)]
    fn encode_general_into(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if ty == SerializeType::Json && cmd.is_bare() {
            return self.encode_bare_json_into(cmd, dst);
        }
        self.encode_general_reserved(cmd, ty, dst)
    }

    /// [`Codec::encode_general_into`] of a frame with a remark or extension fields (or a
    /// ROCKETMQ one): out of line, so that the bare JSON writer's caller stays small.
    #[inline(never)]
    fn encode_general_reserved(
        &self,
        cmd: &Command,
        ty: SerializeType,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        dst.reserve(RESERVE_FOR_HEADER + cmd.body().len());
        self.encode_general_inline(cmd, ty, dst, true)
    }

    /// Refuses a frame of `frame_len` bytes over the limit (the bare writers, whose header is
    /// short by construction).
    #[inline(always)]
    fn check_frame_len(&self, frame_len: usize) -> Result<(), EncodeError> {
        if frame_len as u64 > u64::from(self.limits.max_frame_len) {
            return Err(self.frame_too_large(frame_len));
        }
        Ok(())
    }

    /// The error for a frame of `frame_len` bytes, over the limit.
    #[cold]
    #[inline(never)]
    fn frame_too_large(&self, frame_len: usize) -> EncodeError {
        EncodeError::FrameTooLarge {
            frame_len: frame_len as u64,
            max: self.limits.max_frame_len,
        }
    }

    /// The bytes [`Codec::encode_as`] would write for `cmd`, or why it would refuse.
    pub fn encoded_len(&self, cmd: &Command, ty: SerializeType) -> Result<usize, EncodeError> {
        Ok(PREFIX_LEN + self.checked_header_len(cmd, ty)? + cmd.body().len())
    }

    fn checked_header_len(&self, cmd: &Command, ty: SerializeType) -> Result<usize, EncodeError> {
        let header_len = match ty {
            SerializeType::Json => json::header_len_as(cmd, ty),
            SerializeType::RocketMq => binary::header_len(cmd)?,
        };
        self.check_lengths(header_len, cmd.body().len())?;
        Ok(header_len)
    }

    fn check_lengths(&self, header_len: usize, body_len: usize) -> Result<(), EncodeError> {
        if header_len > MAX_HEADER_LEN {
            return Err(EncodeError::HeaderTooLarge { header_len });
        }
        let frame_len = (PREFIX_LEN + header_len) as u64 + body_len as u64;
        if frame_len > u64::from(self.limits.max_frame_len) {
            return Err(EncodeError::FrameTooLarge {
                frame_len,
                max: self.limits.max_frame_len,
            });
        }
        Ok(())
    }
}

/// The header of a ROCKETMQ frame with no remark and no extension fields: code, language,
/// version, opaque, flag and two zero lengths.
const BARE_HEADER_LEN: usize = 21;

/// Prefix and header of a ROCKETMQ frame of `frame_len` bytes (body included) for `cmd`, which
/// has no remark and no extension fields, with `opaque` and `flag`: bytes 0..24 as three
/// big-endian words (bytes 24..29, the two zero lengths' rest, are zero).
///
/// The words are built in registers and stored straight into the destination: a header built
/// byte by byte on the stack and then copied in two wide loads waits for those narrow stores
/// (they cannot be forwarded to a wider load), which cost the heartbeat encode a third of its
/// time.
#[derive(Clone, Copy)]
struct BareHead([u64; 3]);

/// Prefix and header of a bare ROCKETMQ frame.
const BARE_FRAME_HEAD: usize = PREFIX_LEN + BARE_HEADER_LEN;

impl BareHead {
    #[inline(always)]
    fn new(cmd: &Command, opaque: i32, flag: i32, frame_len: usize) -> BareHead {
        let opaque = u64::from(opaque as u32);
        BareHead([
            prefix_word(frame_len, SerializeType::RocketMq, BARE_HEADER_LEN),
            // code (2 bytes), language, version (2 bytes), opaque's first three bytes
            u64::from(cmd.code as u16) << 48
                | u64::from(cmd.language.0) << 40
                | u64::from(cmd.version as u16) << 24
                | opaque >> 8,
            // opaque's last byte, flag, and the first three bytes of the remark's zero length
            (opaque & 0xff) << 56 | u64::from(flag as u32) << 24,
        ])
    }

    /// Writes the head's `BARE_FRAME_HEAD` bytes at the start of `out` (which must hold them:
    /// the index panics otherwise).
    #[inline(always)]
    fn write_to(self, out: &mut UninitSlice) {
        let out = &mut out[..BARE_FRAME_HEAD];
        out[0..8].copy_from_slice(&self.0[0].to_be_bytes());
        out[8..16].copy_from_slice(&self.0[1].to_be_bytes());
        out[16..24].copy_from_slice(&self.0[2].to_be_bytes());
        // Bytes 21..24 are zero in the word above too: this store overlaps it with the same.
        out[21..29].copy_from_slice(&[0; 8]);
    }

    /// The head as bytes, for a destination whose chunk is too small to write in place.
    fn to_bytes(self) -> [u8; BARE_FRAME_HEAD] {
        let mut bytes = [0; BARE_FRAME_HEAD];
        bytes[0..8].copy_from_slice(&self.0[0].to_be_bytes());
        bytes[8..16].copy_from_slice(&self.0[1].to_be_bytes());
        bytes[16..24].copy_from_slice(&self.0[2].to_be_bytes());
        bytes
    }
}

/// [`Codec::encode_bare_rocketmq`] into a destination whose chunk cannot hold the head at once
/// (out of line: the head's words would otherwise be kept on the stack for it on every call).
#[cold]
#[inline(never)]
fn put_bare_head(cmd: &Command, frame_len: usize, dst: &mut impl BufMut) {
    dst.put_slice(&BareHead::new(cmd, cmd.opaque, cmd.flag, frame_len).to_bytes());
}

/// Room for the prefix and the longest JSON header of a command with no remark and no fields.
const BARE_JSON_HEAD_ROOM: usize = PREFIX_LEN + json::BARE_MAX_LEN;

/// A frame's length prefix and marker as one word (big-endian on the wire): the length after
/// the prefix's first 4 bytes, the serialize type, the header's length.
#[inline(always)]
fn prefix_word(frame_len: usize, ty: SerializeType, header_len: usize) -> u64 {
    ((frame_len - 4) as u64) << 32 | u64::from(ty.code()) << 24 | header_len as u64
}

/// Room [`Codec::encode_into`] makes for prefix and header beyond the body; larger headers take
/// the two-pass path.
const RESERVE_FOR_HEADER: usize = 1024;

/// The marker's 24-bit header length field holds at most this.
const MAX_HEADER_LEN: usize = 0x00FF_FFFF;

/// A frame [`Codec::check_frame`] accepted.
struct Checked {
    ty: SerializeType,
    header_len: usize,
    fixed: Fixed,
    ext_at: u32,
    escapes: json::Escapes,
}

impl Checked {
    /// The command over `frame` (the checked frame, its escapes rewritten).
    fn command(&self, frame: Bytes) -> Command {
        Command::decoded(self.fixed, self.ty, frame, true, self.ext_at)
    }
}

/// Checks the marker word against the frame's length; returns the type and header length.
fn check_marker(length: u32, marker: [u8; 4]) -> Result<(SerializeType, usize), DecodeError> {
    let ty = SerializeType::from_code(marker[0])
        .ok_or(DecodeError::UnknownSerializeType { ty: marker[0] })?;
    let header_len = u32::from_be_bytes([0, marker[1], marker[2], marker[3]]);
    if header_len > length - 4 {
        return Err(DecodeError::HeaderOverrunsFrame {
            header_len,
            available: length - 4,
        });
    }
    Ok((ty, header_len as usize))
}

/// Whether `room` bytes hold what is written of a frame: all `frame_len` of it, or only its
/// prefix and header (`head_len`) when the caller sends the body itself.
#[inline]
fn fits(
    room: usize,
    head_len: usize,
    frame_len: usize,
    with_body: bool,
) -> Result<(), EncodeError> {
    let needed = if with_body { frame_len } else { head_len };
    if room < needed {
        return Err(EncodeError::BufferTooSmall { needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::command::HeaderStr;
    use crate::codec::limits::DEFAULT_MAX_FRAME_LEN;
    use alloc::vec;

    #[test]
    fn length_is_refused_on_the_prefix_alone() {
        let codec = Codec::default();
        let mut buf = BytesMut::from(&[0x01, 0, 0, 1][..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap_err(),
            DecodeError::FrameTooLarge {
                frame_len: (1 << 24) + 5,
                max: 1 << 24
            }
        );
        let mut neg = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
        assert_eq!(
            codec.decode(&mut neg).unwrap_err(),
            DecodeError::NegativeLength { length: -2 }
        );
        let mut short = BytesMut::from(&[0, 0][..]);
        assert_eq!(
            codec.decode(&mut short).unwrap(),
            Decoded::Incomplete { needed: 2 }
        );
    }

    #[test]
    fn a_bad_header_leaves_the_buffer_as_it_was() {
        // Found by the frame_decoder fuzz target: the frame used to be split off and lost.
        let bytes = [0, 0, 0, 6, 0, 0, 0, 2, b'[', b']', 0xaa];
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(Codec::default().decode(&mut buf).is_err());
        assert_eq!(&buf[..], &bytes[..]);
    }

    #[test]
    fn largest_legal_frame_is_accepted_by_the_limit() {
        let codec = Codec::default();
        let length = DEFAULT_MAX_FRAME_LEN - 4;
        let mut buf = BytesMut::from(&length.to_be_bytes()[..]);
        buf.extend_from_slice(&[0, 0, 0, 2]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Decoded::Incomplete {
                needed: length as usize + 4 - 8
            }
        );
    }

    #[test]
    fn encode_refuses_what_the_peer_would_refuse() {
        let codec = Codec::new(Limits {
            max_frame_len: 200,
            ..Limits::default()
        });
        let cmd = Command::request(1).with_body(vec![0u8; 200]);
        let mut out = vec![];
        assert!(matches!(
            codec.encode(&cmd, &mut out),
            Err(EncodeError::FrameTooLarge { .. })
        ));
        assert!(out.is_empty());
        let mut small = [0u8; 16];
        assert_eq!(
            codec.encode(&Command::request(1), &mut &mut small[..]),
            Err(EncodeError::BufferTooSmall {
                needed: codec
                    .encoded_len(&Command::request(1), SerializeType::Json)
                    .unwrap()
            })
        );
    }

    #[test]
    fn in_place_and_two_pass_encodings_agree() {
        let codec = Codec::default();
        let long = "x".repeat(3000);
        let cmds = [
            Command::request(1),
            Command::request(310)
                .with_opaque(-9)
                .with_remark("r\u{1}\"é")
                .with_ext("a", "1")
                .with_ext("properties", "K\u{1}V\u{2}")
                .with_body(&b"body"[..]),
            Command::request(2).with_ext("long", long.as_str()),
        ];
        for cmd in &cmds {
            for ty in [SerializeType::Json, SerializeType::RocketMq] {
                // A fresh BytesMut offers a 64-byte chunk: too small, so the two-pass path runs.
                let mut two_pass = BytesMut::new();
                codec.encode_as(cmd, ty, &mut two_pass).unwrap();
                let mut in_place = BytesMut::with_capacity(8192);
                codec.encode_as(cmd, ty, &mut in_place).unwrap();
                let mut into = BytesMut::new();
                codec.encode_into(cmd, ty, &mut into).unwrap();
                assert_eq!(in_place, two_pass, "{ty:?} {cmd:?}");
                assert_eq!(into, two_pass);
                assert_eq!(two_pass.len(), codec.encoded_len(cmd, ty).unwrap());
            }
        }
        // Refusals commit nothing on either path.
        let small = Codec::new(Limits {
            max_frame_len: 64,
            ..Limits::default()
        });
        let mut out = BytesMut::with_capacity(4096);
        assert!(small
            .encode_as(&cmds[1], SerializeType::Json, &mut out)
            .is_err());
        assert!(out.is_empty());
    }

    /// `cmd`'s frame written part by part through a plain `BufMut` (no window, no fast path).
    fn two_pass_frame(cmd: &Command, ty: SerializeType) -> alloc::vec::Vec<u8> {
        let mut header = vec![];
        match ty {
            SerializeType::Json => json::write_header(cmd, ty, &mut BufSink(&mut header)),
            SerializeType::RocketMq => binary::write_header(
                cmd,
                binary::checked_ext_len(cmd).unwrap(),
                &mut BufSink(&mut header),
            ),
        }
        let mut frame = vec![];
        frame.put_u32((4 + header.len() + cmd.body().len()) as u32);
        frame.put_u32(u32::from(ty.code()) << 24 | header.len() as u32);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(cmd.body());
        frame
    }

    proptest::proptest! {
        /// The fast in-place writers (whole inline buffers, 16-byte blocks, entries in one
        /// loop, falling back near the end of the window) write exactly what the two-pass
        /// writer does, for built and decoded commands alike.
        #[test]
        fn fast_writers_match_the_two_pass_writer(
            entries in proptest::collection::vec(
                ("[\\x00-\\x1f\"\\\\a-z0-9\u{e9}\u{4e2d}\u{1F600}]{0,40}",
                 "[\\x00-\\x1f\"\\\\a-z0-9\u{e9}\u{4e2d}\u{1F600}]{0,40}"),
                0..12,
            ),
            remark in proptest::option::of("[\\x00-\\x7f\u{e9}]{0,30}"),
            slack in 0usize..400,
            ints in proptest::array::uniform4(proptest::prop_oneof![
                proptest::num::i32::ANY,
                -1000i32..1000,
                proptest::sample::select(vec![0, 9, 10, 99, 100, 999_999_999, 1_000_000_000, -1, -10, i32::MIN, i32::MAX]),
            ]),
            language in proptest::prop_oneof![0u8..16, proptest::num::u8::ANY],
            long in proptest::option::of("[\\x00-\\x7f]{17,200}"),
        ) {
            let codec = Codec::default();
            let mut cmd = Command::request(ints[0]).with_opaque(ints[1]);
            cmd.flag = ints[2];
            cmd.version = ints[3];
            cmd.language = crate::LanguageCode(language);
            for (k, v) in &entries {
                cmd = cmd.with_ext(k.as_str(), v.as_str());
            }
            // Shared strings (not inline): a long one, and a short one from a static.
            if let Some(long) = &long {
                cmd = cmd
                    .with_ext(long.as_str(), "v")
                    .with_ext(HeaderStr::from_static("static"), long.as_str());
            }
            if let Some(r) = &remark {
                cmd = cmd.with_remark(r.as_str());
            }
            for ty in [SerializeType::Json, SerializeType::RocketMq] {
                let two_pass = BytesMut::from(&two_pass_frame(&cmd, ty)[..]);
                // A window with plenty of room, and one that runs short somewhere.
                for cap in [8192, two_pass.len() + slack] {
                    let mut out = BytesMut::with_capacity(cap);
                    codec.encode_as(&cmd, ty, &mut out).unwrap();
                    proptest::prop_assert_eq!(&out, &two_pass);
                }
                // A decoded command goes through the fields read from its frame.
                let Decoded::Command(back) = codec.decode(&mut two_pass.clone()).unwrap() else {
                    panic!("a whole frame")
                };
                let mut again = BytesMut::with_capacity(8192);
                codec.encode_as(&back, ty, &mut again).unwrap();
                proptest::prop_assert_eq!(&again[..], &two_pass_frame(&back, ty)[..]);
            }
        }
    }

    /// Every window size from too small to roomy, so that each fast writer's room check meets
    /// the window's end at every entry: the frame is always the two-pass writer's (debug
    /// builds also assert each unchecked store against the room checked for it).
    #[test]
    fn every_window_size_gives_the_two_pass_frame() {
        let codec = Codec::default();
        let long = "l".repeat(40);
        let mut cmds = vec![];
        for remark in [None, Some("r\u{1}"), Some(long.as_str())] {
            let mut cmd = Command::request(310)
                .with_opaque(-7)
                .with_body(&b"body"[..]);
            for (k, v) in [
                ("a", "1"),
                ("f", "sixteen-bytes-16"),
                ("gg", "fifteen-bytes15"),
                ("h", "4"),
                ("i", "twelve-bytes"),
                ("bb", "twenty-two-bytes-value"),
                ("sixteen-byte-key", "sixteen-byte-val"),
                ("q\"", "x\\y"),
                ("", ""),
                ("k", long.as_str()),
                (long.as_str(), "v"),
                ("c", "ctl\u{2}"),
                ("d", "2"),
                ("e", "3"),
                ("j", "5"),
                ("kk", "six---"),
                ("m", "7"),
            ] {
                cmd = cmd.with_ext(k, v);
            }
            if let Some(r) = remark {
                cmd = cmd.with_remark(r);
            }
            cmds.push(cmd);
        }
        for cmd in &cmds {
            for ty in [SerializeType::Json, SerializeType::RocketMq] {
                let expected = two_pass_frame(cmd, ty);
                for cap in 0..expected.len() + 400 {
                    let mut out = BytesMut::with_capacity(cap);
                    codec.encode_as(cmd, ty, &mut out).unwrap();
                    assert_eq!(&out[..], &expected[..], "{ty:?} capacity {cap}");
                }
            }
        }
    }

    #[test]
    fn bare_rocketmq_frames_match_the_general_writer() {
        let codec = Codec::default();
        let mut odd = Command::request(-70_000).with_opaque(i32::MIN);
        odd.version = 0x1_2345;
        odd.flag = -1;
        odd.language = crate::LanguageCode(200);
        let cmds = [
            Command::request(34),
            Command::request(1).with_body(&b"body"[..]),
            Command::request(7).response(-3),
            odd,
        ];
        for cmd in &cmds {
            assert!(cmd.is_bare());
            let mut general = vec![];
            codec
                .encode_general(cmd, SerializeType::RocketMq, &mut general, true)
                .unwrap();
            // Room for the frame, and a full buffer that must grow first.
            for mut out in [BytesMut::with_capacity(256), BytesMut::new()] {
                codec
                    .encode_as(cmd, SerializeType::RocketMq, &mut out)
                    .unwrap();
                assert_eq!(&out[..], &general[..], "{cmd:?}");
            }
            // `encode_into`'s inline writer: after what a buffer holds, into a full buffer, a
            // shared one (split off), and one with room.
            let mut shared = BytesMut::with_capacity(64);
            shared.extend_from_slice(b"before");
            let taken = shared.split();
            for mut out in [BytesMut::new(), shared, BytesMut::with_capacity(256)] {
                out.extend_from_slice(b"xy");
                codec
                    .encode_into(cmd, SerializeType::RocketMq, &mut out)
                    .unwrap();
                assert_eq!(&out[2..], &general[..], "{cmd:?}");
            }
            assert_eq!(&taken[..], b"before");
            // Over the frame limit: the same refusal as the general writer's, nothing written.
            let tight = Codec::new(Limits {
                max_frame_len: general.len() as u32 - 1,
                ..Limits::default()
            });
            let mut out = BytesMut::new();
            let refused = tight.encode_into(cmd, SerializeType::RocketMq, &mut out);
            assert_eq!(
                refused,
                Err(EncodeError::FrameTooLarge {
                    frame_len: general.len() as u64,
                    max: general.len() as u32 - 1
                })
            );
            assert_eq!(
                refused,
                tight.encode_general(cmd, SerializeType::RocketMq, &mut vec![], true)
            );
            assert!(out.is_empty());
            let mut head = BytesMut::new();
            codec
                .encode_head_into(cmd, SerializeType::RocketMq, &mut head)
                .unwrap();
            assert_eq!(&head[..], &general[..general.len() - cmd.body().len()]);
            // A destination whose first chunk cannot hold the head: written piecewise.
            let mut first = [0u8; 16];
            let mut chained = (&mut first[..]).chain_mut(alloc::vec::Vec::new());
            codec
                .encode_as(cmd, SerializeType::RocketMq, &mut chained)
                .unwrap();
            let rest = chained.into_inner().1;
            assert_eq!([&first[..], &rest[..]].concat(), general, "{cmd:?}");
            let mut small = [0u8; 16];
            assert_eq!(
                codec.encode_as(cmd, SerializeType::RocketMq, &mut &mut small[..]),
                Err(EncodeError::BufferTooSmall {
                    needed: general.len()
                })
            );
        }
    }

    /// The bare JSON writer (a JSON command with no remark and no fields) writes the two-pass
    /// writer's bytes: every language, numbers of every length and sign, with and without a
    /// body, through `encode_into` into buffers of every capacity, shared or not, and through
    /// `encode_as` into slices of every length (refused as the two-pass writer refuses them)
    /// and `encode_head_into`; over the frame limit it refuses as the general writer does,
    /// writing nothing.
    #[test]
    fn bare_json_frames_match_the_general_writer() {
        let codec = Codec::default();
        let numbers = [
            0,
            7,
            -7,
            42,
            310,
            -310,
            99_999,
            1 << 16,
            123_456_789,
            i32::MAX,
            i32::MIN,
        ];
        let mut cmds = vec![];
        for (i, &n) in numbers.iter().enumerate() {
            for language in (0..14).chain([14, 200, 255]) {
                let mut cmd = Command::request(numbers[(i + 3) % numbers.len()]);
                cmd.version = numbers[(i + 5) % numbers.len()];
                cmd.language = crate::LanguageCode(language);
                cmd.opaque = n;
                cmd.flag = numbers[(i + language as usize) % numbers.len()];
                if language % 3 == 0 {
                    cmd = cmd.with_body(&b"a body"[..]);
                }
                cmds.push(cmd);
            }
        }
        for cmd in &cmds {
            assert!(cmd.is_bare());
            let expected = two_pass_frame(cmd, SerializeType::Json);
            for cap in 0..expected.len() + 300 {
                let mut out = BytesMut::with_capacity(cap);
                codec
                    .encode_into(cmd, SerializeType::Json, &mut out)
                    .unwrap();
                assert_eq!(&out[..], &expected[..], "capacity {cap}");
                let mut slice = vec![0u8; cap];
                let mut window = &mut slice[..];
                match codec.encode_as(cmd, SerializeType::Json, &mut window) {
                    Ok(()) => assert_eq!(&slice[..expected.len()], &expected[..], "{cap}"),
                    Err(e) => assert!(
                        cap < expected.len()
                            && e == EncodeError::BufferTooSmall {
                                needed: expected.len()
                            },
                        "{cap}: {e:?}"
                    ),
                }
            }
            // After what a buffer holds, into a full buffer, a shared one (split off), and
            // one with room.
            let mut shared = BytesMut::with_capacity(300);
            shared.extend_from_slice(b"before");
            let taken = shared.split();
            for mut out in [BytesMut::new(), shared, BytesMut::with_capacity(512)] {
                out.extend_from_slice(b"xy");
                codec
                    .encode_into(cmd, SerializeType::Json, &mut out)
                    .unwrap();
                assert_eq!(&out[2..], &expected[..]);
            }
            assert_eq!(&taken[..], b"before");
            let mut head = BytesMut::new();
            codec
                .encode_head_into(cmd, SerializeType::Json, &mut head)
                .unwrap();
            assert_eq!(&head[..], &expected[..expected.len() - cmd.body().len()]);
            // Over the frame limit: the general writer's refusal, nothing written.
            let tight = Codec::new(Limits {
                max_frame_len: expected.len() as u32 - 1,
                ..Limits::default()
            });
            let mut out = BytesMut::with_capacity(64);
            out.extend_from_slice(b"xy");
            let refused = tight.encode_into(cmd, SerializeType::Json, &mut out);
            assert_eq!(
                refused,
                Err(EncodeError::FrameTooLarge {
                    frame_len: expected.len() as u64,
                    max: expected.len() as u32 - 1
                })
            );
            assert_eq!(&out[..], b"xy");
            let mut roomy = vec![0u8; 1024];
            assert_eq!(
                tight.encode_as(cmd, SerializeType::Json, &mut &mut roomy[..]),
                refused
            );
        }
    }

    #[test]
    fn encode_as_overrides_the_commands_type() {
        let codec = Codec::default();
        let cmd = Command::request(7).with_ext("k", "v");
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            let mut out = BytesMut::new();
            codec.encode_as(&cmd, ty, &mut out).unwrap();
            assert_eq!(out.len(), codec.encoded_len(&cmd, ty).unwrap());
            let Decoded::Command(back) = codec.decode(&mut out).unwrap() else {
                panic!()
            };
            assert_eq!(back.serialize_type, ty);
            assert_eq!(back.code, 7);
            assert_eq!(back.ext_fields(), cmd.ext_fields());
            assert!(out.is_empty());
        }
    }
}
