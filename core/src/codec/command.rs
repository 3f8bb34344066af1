//! The command model: what one remoting frame carries.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use bytes::Bytes;

use crate::codec::binary;

/// Flag bit 0: the command is a response.
pub const FLAG_RESPONSE: i32 = 1;
/// Flag bit 1: the request is oneway; a server never answers it.
pub const FLAG_ONEWAY: i32 = 1 << 1;

/// The `version` Remora puts on the commands it builds: RocketMQ V5_3_3's release ordinal.
pub const DEFAULT_VERSION: i32 = 479;

/// How a frame's header is serialized (the high byte of the frame's marker word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SerializeType {
    /// JSON header (type byte 0), what every peer accepts.
    #[default]
    Json,
    /// RocketMQ's compact binary header (type byte 1).
    RocketMq,
}

impl SerializeType {
    /// The type byte written in the high byte of the marker word.
    pub const fn code(self) -> u8 {
        match self {
            SerializeType::Json => 0,
            SerializeType::RocketMq => 1,
        }
    }

    /// The type for a marker's type byte, or `None` for a type byte no peer defines.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(SerializeType::Json),
            1 => Some(SerializeType::RocketMq),
            _ => None,
        }
    }

    /// The name Java uses: `"JSON"` or `"ROCKETMQ"`.
    pub const fn name(self) -> &'static str {
        match self {
            SerializeType::Json => "JSON",
            SerializeType::RocketMq => "ROCKETMQ",
        }
    }

    /// The type for a name as [`SerializeType::name`] prints it (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("JSON") {
            Some(SerializeType::Json)
        } else if name.eq_ignore_ascii_case("ROCKETMQ") {
            Some(SerializeType::RocketMq)
        } else {
            None
        }
    }
}

/// The sender's implementation language, as the wire byte.
///
/// Known languages are associated constants; any other byte is kept as it came, so a command decoded
/// from a newer peer re-encodes unchanged.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LanguageCode(pub u8);

const LANGUAGE_NAMES: [&str; 14] = [
    "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP",
    "OMS", "RUST", "NODE_JS",
];

impl LanguageCode {
    /// `JAVA` (0).
    pub const JAVA: Self = Self(0);
    /// `CPP` (1).
    pub const CPP: Self = Self(1);
    /// `DOTNET` (2).
    pub const DOTNET: Self = Self(2);
    /// `PYTHON` (3).
    pub const PYTHON: Self = Self(3);
    /// `DELPHI` (4).
    pub const DELPHI: Self = Self(4);
    /// `ERLANG` (5).
    pub const ERLANG: Self = Self(5);
    /// `RUBY` (6).
    pub const RUBY: Self = Self(6);
    /// `OTHER` (7): what Remora sends by default, since every peer version knows it.
    pub const OTHER: Self = Self(7);
    /// `HTTP` (8).
    pub const HTTP: Self = Self(8);
    /// `GO` (9).
    pub const GO: Self = Self(9);
    /// `PHP` (10).
    pub const PHP: Self = Self(10);
    /// `OMS` (11).
    pub const OMS: Self = Self(11);
    /// `RUST` (12). Java brokers before 5.0 do not know it.
    pub const RUST: Self = Self(12);
    /// `NODE_JS` (13).
    pub const NODE_JS: Self = Self(13);

    /// The Java enum name, or `None` for a byte no known peer defines.
    pub fn name(self) -> Option<&'static str> {
        LANGUAGE_NAMES.get(usize::from(self.0)).copied()
    }

    /// The language with Java enum name `name` (exact, case-sensitive as Java is).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::from_name_bytes(name.as_bytes())
    }

    pub(crate) fn from_name_bytes(name: &[u8]) -> Option<Self> {
        LANGUAGE_NAMES
            .iter()
            .position(|n| n.as_bytes() == name)
            .map(|i| Self(i as u8))
    }

    /// The language whose name followed by a quote is `word`, read as a little-endian word
    /// (the name's bytes, the `"`, zeros above it): one multiplication, one table load and
    /// one comparison (a word that holds no `"`, or anything after it, matches no name).
    #[inline(always)]
    pub(crate) fn from_quoted_word(word: u64) -> Option<Self> {
        let (key, code) = QUOTED_NAMES[(word.wrapping_mul(NAME_HASH) >> 60) as usize];
        (key == word).then_some(Self(code))
    }
}

/// A multiplier whose product with each known name followed by `"` (as a little-endian word)
/// has its own top four bits: a perfect hash of the 14 names into [`QUOTED_NAMES`] (checked
/// as the table is built).
const NAME_HASH: u64 = 0xbae9_5d91_d2a9_59a5;

/// Each known name followed by `"` as a little-endian word, and its code, at its hash
/// ([`NAME_HASH`]); 0 (no name's word) in the two slots no name takes.
static QUOTED_NAMES: [(u64, u8); 16] = {
    let mut table = [(0u64, 0u8); 16];
    let mut code = 0;
    while code < LANGUAGE_NAMES.len() {
        let name = LANGUAGE_NAMES[code].as_bytes();
        assert!(name.len() < 8, "a name and its quote fit a word");
        let mut word = (b'"' as u64) << (8 * name.len());
        let mut i = 0;
        while i < name.len() {
            word |= (name[i] as u64) << (8 * i);
            i += 1;
        }
        let slot = (word.wrapping_mul(NAME_HASH) >> 60) as usize;
        assert!(
            table[slot].0 == 0,
            "NAME_HASH gives every name its own slot"
        );
        table[slot] = (word, code as u8);
        code += 1;
    }
    table
};

impl Default for LanguageCode {
    fn default() -> Self {
        Self::OTHER
    }
}

impl fmt::Debug for LanguageCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "LanguageCode({})", self.0),
        }
    }
}

/// A UTF-8 string from a header: short ones are stored inline, longer ones share the frame's
/// read buffer.
///
/// Header strings (the remark, extension field keys and values) decode without allocating: up
/// to [`HeaderStr::INLINE_CAPACITY`] bytes are copied into the value itself (no heap, no
/// reference count to touch), longer unescaped ones are zero-copy slices of the frame's
/// [`Bytes`]. Holding a long one keeps that frame's buffer alive; call [`HeaderStr::detach`] to
/// copy it out.
#[derive(Clone)]
pub struct HeaderStr(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Shared(Bytes),
}

const INLINE: usize = 22;

impl Default for HeaderStr {
    fn default() -> Self {
        HeaderStr::EMPTY
    }
}

impl PartialEq for HeaderStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeaderStr {}

impl PartialOrd for HeaderStr {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeaderStr {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl core::hash::Hash for HeaderStr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl HeaderStr {
    /// The empty string.
    pub const EMPTY: Self = HeaderStr(Repr::Inline {
        len: 0,
        buf: [0; INLINE],
    });

    /// Strings up to this many bytes are stored inline.
    pub const INLINE_CAPACITY: usize = INLINE;

    /// A string borrowed for the program's life, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Repr::Shared(Bytes::from_static(s.as_bytes())))
    }

    /// Wraps `bytes` if they are UTF-8 (inline if short, else sharing them), else gives them
    /// back with the error.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, (Bytes, core::str::Utf8Error)> {
        match core::str::from_utf8(&bytes) {
            Ok(s) if s.len() <= INLINE => Ok(Self::inline(s)),
            Ok(_) => Ok(Self(Repr::Shared(bytes))),
            Err(e) => Err((bytes, e)),
        }
    }

    fn inline(s: &str) -> Self {
        debug_assert!(s.len() <= INLINE);
        let mut buf = [0; INLINE];
        buf[..s.len()].copy_from_slice(s.as_bytes());
        Self(Repr::Inline {
            len: s.len() as u8,
            buf,
        })
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        let bytes = self.as_bytes();
        // SAFETY: every constructor checks that the bytes are UTF-8 (`from_utf8`,
        // `from_utf8_slice`) or copies them from a `str`/`String`; inline bytes are a copy of a
        // `str`'s, and neither representation is mutated afterwards.
        // `tests::header_str_rejects_invalid_utf8` checks the fallible constructors.
        unsafe { core::str::from_utf8_unchecked(bytes) }
    }

    /// The UTF-8 bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Shared(b) => b,
        }
    }

    /// A short string's inline buffer and its length (`None` for a shared one): encoders copy
    /// the whole fixed-size buffer (no branch on the length) and keep the first `len` bytes.
    /// Bytes past `len` are unspecified.
    #[inline]
    pub(crate) fn inline_buf(&self) -> Option<(&[u8; INLINE], usize)> {
        match &self.0 {
            Repr::Inline { len, buf } => Some((buf, usize::from(*len))),
            Repr::Shared(_) => None,
        }
    }

    /// Whether the string is stored inline (short) rather than sharing a buffer.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }

    /// The string as `Bytes` (shares the buffer when it is a slice of one).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            Repr::Shared(b) => b.clone(),
        }
    }

    /// Copies the string into memory of its own, so it no longer keeps a frame alive.
    pub fn detach(&self) -> Self {
        match &self.0 {
            Repr::Inline { .. } => self.clone(),
            Repr::Shared(b) => Self(Repr::Shared(Bytes::copy_from_slice(b))),
        }
    }
}

impl Deref for HeaderStr {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for HeaderStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for HeaderStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HeaderStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for HeaderStr {
    fn from(s: String) -> Self {
        if s.len() <= INLINE {
            Self::inline(&s)
        } else {
            Self(Repr::Shared(Bytes::from(s.into_bytes())))
        }
    }
}

impl From<&str> for HeaderStr {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            Self::inline(s)
        } else {
            Self(Repr::Shared(Bytes::copy_from_slice(s.as_bytes())))
        }
    }
}

impl From<HeaderStr> for String {
    fn from(s: HeaderStr) -> String {
        String::from(s.as_str())
    }
}

impl PartialEq<str> for HeaderStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HeaderStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Extension fields a program built: string keys to string values, in insertion order.
///
/// This is the owned form, what [`Command::ext_fields_mut`] hands out and what
/// [`Command::with_ext`] fills. A decoded command reads its fields straight from the frame
/// ([`Command::ext_fields`]); the first change turns them into this.
///
/// [`ExtFields::get`] returns the last value for a key, which is what Java's `HashMap` ends up
/// holding when a peer sends a key twice. [`ExtFields::insert`] replaces a key's value in place.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ExtFields {
    entries: Vec<(HeaderStr, HeaderStr)>,
}

impl ExtFields {
    /// No fields.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// No fields, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            entries: Vec::with_capacity(n),
        }
    }

    /// The number of entries (duplicates counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key` (the last one, if it is there twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }

    /// The entries in order.
    #[inline]
    pub fn iter(&self) -> ExtIter<'_> {
        ExtIter::over(Walk::Owned, &[], &self.entries)
    }

    /// Sets `key` to `value`, in place if the key is present (every copy of it), else at the end.
    /// Returns the previous value.
    pub fn insert(
        &mut self,
        key: impl Into<HeaderStr>,
        value: impl Into<HeaderStr>,
    ) -> Option<HeaderStr> {
        let key = key.into();
        let value = value.into();
        let mut old = None;
        let mut found = false;
        self.entries.retain_mut(|(k, v)| {
            if *k != key {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            old = Some(core::mem::replace(v, value.clone()));
            true
        });
        if !found {
            self.entries.push((key, value));
        }
        old
    }

    /// Removes every entry for `key`, returning the value that [`ExtFields::get`] would have.
    pub fn remove(&mut self, key: &str) -> Option<HeaderStr> {
        self.get(key)?;
        let mut last = None;
        self.entries.retain(|(k, v)| {
            if k.as_str() == key {
                last = Some(v.clone());
                false
            } else {
                true
            }
        });
        last
    }

    /// Appends an entry without looking for the key (so a key may end up there twice, as a
    /// peer may send it).
    pub fn push(&mut self, key: impl Into<HeaderStr>, value: impl Into<HeaderStr>) {
        self.entries.push((key.into(), value.into()));
    }
}

impl fmt::Debug for ExtFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<HeaderStr>, V: Into<HeaderStr>> FromIterator<(K, V)> for ExtFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut ext = ExtFields::new();
        for (k, v) in iter {
            ext.insert(k, v);
        }
        ext
    }
}

impl<'a> IntoIterator for &'a ExtFields {
    type Item = (&'a str, &'a str);
    type IntoIter = ExtIter<'a>;
    fn into_iter(self) -> ExtIter<'a> {
        self.iter()
    }
}

/// A command's extension fields, read in place: what [`Command::ext_fields`] returns.
///
/// A decoded command's fields are read from its frame on each call (nothing was indexed when
/// it was decoded, so decoding allocates nothing); a built command's from its [`ExtFields`].
/// Entries come in wire order, duplicates included; [`Ext::get`] returns the last one.
#[derive(Clone, Copy)]
pub struct Ext<'a> {
    src: ExtSrc<'a>,
}

#[derive(Clone, Copy)]
enum ExtSrc<'a> {
    /// A ROCKETMQ extension block (validated when decoded).
    Binary(&'a [u8]),
    /// A JSON header from the `{` of its `extFields` object (validated, escapes rewritten).
    Json(&'a [u8]),
    /// A JSON header from its compacted `extFields` object (see [`COMPACT_EXT`]).
    Compact(&'a [u8]),
    Owned(&'a [(HeaderStr, HeaderStr)]),
}

impl<'a> Ext<'a> {
    /// The entries in wire order.
    #[inline]
    pub fn iter(&self) -> ExtIter<'a> {
        match self.src {
            ExtSrc::Binary(block) => ExtIter::over(Walk::Binary, block, &[]),
            ExtSrc::Json(text) => ExtIter::over(Walk::Json, text, &[]),
            ExtSrc::Compact(text) => ExtIter::over(Walk::Compact, text, &[]),
            ExtSrc::Owned(v) => ExtIter::over(Walk::Owned, &[], v),
        }
    }

    /// The value of `key` (the last one, if the peer sent the key twice).
    #[inline]
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter()
            .fold(None, |found, (k, v)| if k == key { Some(v) } else { found })
    }

    /// The number of entries (duplicates counted). Counts them: O(fields).
    pub fn len(&self) -> usize {
        match self.src {
            ExtSrc::Owned(v) => v.len(),
            _ => self.iter().count(),
        }
    }

    /// Whether there are no entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// A copy in the owned form.
    pub fn to_ext_fields(self) -> ExtFields {
        ExtFields {
            entries: self
                .iter()
                .map(|(k, v)| (HeaderStr::from(k), HeaderStr::from(v)))
                .collect(),
        }
    }
}

impl<'a> IntoIterator for Ext<'a> {
    type Item = (&'a str, &'a str);
    type IntoIter = ExtIter<'a>;
    #[inline]
    fn into_iter(self) -> ExtIter<'a> {
        self.iter()
    }
}

impl PartialEq for Ext<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Ext<'_> {}

impl PartialEq<ExtFields> for Ext<'_> {
    fn eq(&self, other: &ExtFields) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Ext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterator over extension fields, in wire order.
///
/// Every way of walking keeps its state in the same plain fields (not in an enum's payload),
/// so that a loop over the entries keeps them in registers: with the state in an enum, each
/// step stored its position to the stack and loaded it back, a wait on the chain of loads
/// that finds one entry from the last.
#[derive(Clone)]
pub struct ExtIter<'a> {
    walk: Walk,
    /// `Binary`, `Compact`: the rest of the block or object; `Json`: the header from the
    /// object's `{`.
    rest: &'a [u8],
    /// `Json`: where the next entry (or the closing `}`) is in `rest`.
    pos: usize,
    /// `Owned`: the entries not yet returned.
    owned: core::slice::Iter<'a, (HeaderStr, HeaderStr)>,
}

/// How an [`ExtIter`] finds the next entry.
#[derive(Clone, Copy)]
enum Walk {
    /// A ROCKETMQ extension block ([`next_binary`]).
    Binary,
    /// A JSON header's `extFields` object as sent, escapes rewritten ([`next_json`]).
    Json,
    /// A compacted `extFields` object ([`next_compact`], see [`COMPACT_EXT`]).
    Compact,
    /// A built command's [`ExtFields`].
    Owned,
}

impl<'a> ExtIter<'a> {
    #[inline(always)]
    fn over(walk: Walk, rest: &'a [u8], owned: &'a [(HeaderStr, HeaderStr)]) -> Self {
        ExtIter {
            walk,
            rest,
            // After the `{`.
            pos: 1,
            owned: owned.iter(),
        }
    }
}

/// `bytes` as text.
///
/// Only for bytes a decoder has validated as UTF-8: every decoded string (JSON: the whole
/// header before parsing, and in-place unescaping writes only UTF-8; ROCKETMQ: the remark and
/// the extension block when decoded). The frame is immutable `Bytes` afterwards.
#[inline]
pub(crate) fn validated_str(bytes: &[u8]) -> &str {
    debug_assert!(core::str::from_utf8(bytes).is_ok(), "not UTF-8");
    // SAFETY: see above; the debug assertion re-checks it in every test, property test and
    // fuzz run, and `tests::decoded_views_are_utf8` reads every field of every vector.
    unsafe { core::str::from_utf8_unchecked(bytes) }
}

/// The next entry of a validated ROCKETMQ extension block (entries with an empty value
/// skipped, as Java reads them as null).
///
/// A common entry (a one-byte key and a value shorter than 256 bytes, see
/// `crate::codec::binary`) is read from one word: no length to reassemble, one bounds check.
#[inline]
fn next_binary<'a>(block: &mut &'a [u8]) -> Option<(&'a str, &'a str)> {
    loop {
        let b = *block;
        if let Some(entry) = b.first_chunk::<8>() {
            if u64::from_le_bytes(*entry) & binary::SHAPE_MASK == binary::SHAPE {
                let value_len = usize::from(entry[6]);
                let (this, rest) = b.split_at_checked(7 + value_len)?;
                *block = rest;
                if value_len != 0 {
                    return Some((validated_str(&this[2..3]), validated_str(&this[7..])));
                }
                continue;
            }
        }
        let key_len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
        let key = b.get(2..2 + key_len)?;
        let at = 2 + key_len;
        let len = b.get(at..at + 4)?;
        let value_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let value = b.get(at + 4..at + 4 + value_len)?;
        *block = &b[at + 4 + value_len..];
        if value_len != 0 {
            return Some((validated_str(key), validated_str(value)));
        }
    }
}

/// First byte of a JSON header the decoder rewrote to say where its remark is: the next three
/// bytes (big-endian) are the position of the remark's opening quote (or of its
/// [`UNESCAPED_START`]), the three after them that of its closing quote as written (an
/// unescaped remark's text ends at its first [`UNESCAPED_END`] before it). It overwrites the
/// header's first seven bytes, which the parser checked; `{` cannot be it.
pub(crate) const REMARK_AT: u8 = 0xFD;

/// `ext_at` flag: the `extFields` object of a JSON header was compacted in place when decoded.
///
/// Each of its strings keeps its place; the two bytes before its text hold its length,
/// big-endian with the top two bits `10` (at most `0x3FFF`, see [`slot_len`]); a key of at
/// most 63 bytes whose value has at most 255, neither escaped, may instead hold
/// `0xC0 | key length` and the value's length there (a *short* key slot: both lengths in one
/// load), and then its value's two bytes before the text stay `:"`. What follows the text up
/// to the next length is `"` (closing quotes, and the padding of an unescaped string), or a
/// [`COMPACT_SKIP`] over that padding; the object's `}` stays and ends it.
/// `crate::codec::json::compact` writes it.
pub(crate) const COMPACT_EXT: u32 = 1 << 31;

/// In a compacted `extFields` object, the first byte after the text of a string that
/// unescaping shortened by 2 or more: it and the next two bytes (big-endian) say how many bytes
/// to skip (up to and including the string's closing quote), so that a reader does not step
/// over the padding a byte at a time.
pub(crate) const COMPACT_SKIP: u8 = 0xFC;

/// The first byte of a short key slot is at least this (see [`COMPACT_EXT`]); a long slot's
/// first byte is 0x80 to 0xBF.
pub(crate) const SHORT_SLOT: u8 = 0xC0;

/// The length a compacted string's slot (`hi`, `lo`: the two bytes before its text, `hi` at
/// least 0x80) holds: a short key slot's key length, or the long form's 14 bits.
#[inline(always)]
pub(crate) fn slot_len(hi: u8, lo: u8) -> usize {
    if hi >= SHORT_SLOT {
        usize::from(hi & 0x3F)
    } else {
        usize::from(hi & 0x3F) << 8 | usize::from(lo)
    }
}

/// The entry a short key slot (`hi`, `lo`, `hi` at least [`SHORT_SLOT`]) starts, counted from
/// the slot: where its key's text ends (the key's closing quote), and where its value's text
/// starts and ends (the value's closing quote); the key's text starts at 2.
#[inline(always)]
pub(crate) fn short_entry(hi: u8, lo: u8) -> (usize, usize, usize) {
    let key_end = 2 + usize::from(hi & 0x3F);
    // The key's `"`, then the value's `:"`, never written over.
    let value_at = key_end + 3;
    (key_end, value_at, value_at + usize::from(lo))
}

/// The next entry of a compacted `extFields` object (`rest` starts at a key's length, or at
/// the closing `}`); `rest` moves past it (to the `}`'s end when there is none).
///
/// The usual entry — a short key slot, key, one `"`, value length, value, one `"`, then the
/// next key's length or the `}` — is read with one load on the chain from entry to entry (the
/// short slot: both lengths; the quotes around are checked off that chain); one with a long
/// key slot with two dependent loads (each string's length); anything else (an unescaped
/// string's padding, a skip, the end) by [`next_compact_general`], which reads every shape
/// the same way.
#[inline]
fn next_compact<'a>(rest: &mut &'a [u8]) -> Option<(&'a str, &'a str)> {
    let r = *rest;
    if let Some(&[kh, kl]) = r.first_chunk::<2>() {
        if kh >= SHORT_SLOT {
            let (key_end, value_at, value_end) = short_entry(kh, kl);
            // The key's closing quote, the value's, and no padding quote after it.
            if let (Some(b'"'), Some(&[b'"', next])) = (
                r.get(key_end),
                r.get(value_end..).and_then(|t| t.first_chunk::<2>()),
            ) {
                if next != b'"' {
                    *rest = &r[value_end + 1..];
                    return Some((
                        validated_str(&r[2..key_end]),
                        validated_str(&r[value_at..value_end]),
                    ));
                }
            }
        }
        let key_len = slot_len(kh, kl);
        let value_at = 2 + key_len + 3;
        if let Some(&[b'"', vh, vl]) = r.get(2 + key_len..).and_then(|t| t.first_chunk::<3>()) {
            let value_len = slot_len(vh, vl);
            let value_end = value_at + value_len;
            // A `"` after the value and no second one (a padding quote) or skip after it;
            // both lengths with their high bit, as the general reader requires.
            if let Some(&[b'"', next]) = r.get(value_end..).and_then(|t| t.first_chunk::<2>()) {
                if kh >= 0x80 && vh >= 0x80 && next != b'"' {
                    *rest = &r[value_end + 1..];
                    return Some((
                        validated_str(&r[2..2 + key_len]),
                        validated_str(&r[value_at..value_end]),
                    ));
                }
            }
        }
    }
    // The object's end, seen by every walk once: without the call.
    if let [b'}', after @ ..] = r {
        *rest = after;
        return None;
    }
    let (entry, after) = next_compact_general(r);
    *rest = after;
    entry
}

/// [`next_compact`] for any entry of a compacted `extFields` object: the entry and the rest
/// after it. (The rest is returned, not written through a reference: a reference passed to a
/// call that is not inlined would keep the caller's loop state in memory.)
#[inline(never)]
fn next_compact_general(rest: &[u8]) -> (Option<(&str, &str)>, &[u8]) {
    #[inline(always)]
    fn string(r: &[u8]) -> Option<(&str, &[u8])> {
        let &[hi, lo, ..] = r else { return None };
        if hi < 0x80 {
            return None;
        }
        let len = slot_len(hi, lo);
        let text = r.get(2..2 + len)?;
        let mut after = &r[2 + len..];
        if let [COMPACT_SKIP, hi, lo, ..] = *after {
            after = after.get(usize::from(u16::from_be_bytes([hi, lo]))..)?;
        }
        while let [b'"', tail @ ..] = after {
            after = tail;
        }
        Some((validated_str(text), after))
    }
    if let [hi @ SHORT_SLOT..=0xFF, lo, ..] = *rest {
        // A short key slot: the key, `":"`, the value, its `"` (no escape, so no padding).
        let (key_end, value_at, value_end) = short_entry(hi, lo);
        return match (rest.get(2..key_end), rest.get(value_at..value_end)) {
            (Some(key), Some(value)) => (
                Some((validated_str(key), validated_str(value))),
                rest.get(value_end + 1..).unwrap_or(&[]),
            ),
            _ => (None, rest.get(1..).unwrap_or(&[])),
        };
    }
    let Some((key, after)) = string(rest) else {
        return (None, rest.get(1..).unwrap_or(&[]));
    };
    match string(after) {
        Some((value, after)) => (Some((key, value)), after),
        None => (None, rest),
    }
}

/// Marks a JSON string whose escapes were rewritten in place: the opening quote becomes this,
/// the unescaped text follows, then [`UNESCAPED_END`] up to where the closing quote was. Neither
/// byte occurs in UTF-8, so neither can be part of the text.
pub(crate) const UNESCAPED_START: u8 = 0xFE;
/// See [`UNESCAPED_START`].
pub(crate) const UNESCAPED_END: u8 = 0xFF;

#[inline]
fn skip_json_ws(text: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = text.get(pos) {
        pos += 1;
    }
    pos
}

/// The first `byte` in `s` at or after `from`: eight bytes at a time for the first 64 (header
/// strings are mostly short, and a call into `memchr` costs more than scanning them), then
/// `memchr` for the rest.
#[inline(always)]
fn find_byte(s: &[u8], from: usize, byte: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut j = from;
    let short_end = s.len().min(from.saturating_add(64));
    while j + 8 <= short_end {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[j..j + 8]);
        let x = u64::from_le_bytes(w) ^ (ONES * u64::from(byte));
        // The high bit of every zero byte of `x` (and maybe of bytes above the lowest one,
        // through the borrow: the lowest is exact, and the load was little-endian).
        let hits = x.wrapping_sub(ONES) & !x & HIGHS;
        if hits != 0 {
            return Some(j + (hits.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    if short_end < s.len() {
        return memchr::memchr(byte, &s[j..]).map(|k| j + k);
    }
    s.get(j..)?.iter().position(|&b| b == byte).map(|k| j + k)
}

/// The string at `pos` of a validated, rewritten JSON header (plain `"…"` or rewritten), and the
/// position after it.
#[inline]
fn json_str(text: &[u8], pos: usize) -> Option<(&str, usize)> {
    match text.get(pos)? {
        b'"' => {
            let end = find_byte(text, pos + 1, b'"')?;
            let s = &text[pos + 1..end];
            Some((validated_str(s), end + 1))
        }
        &UNESCAPED_START => {
            let text_end = find_byte(text, pos + 1, UNESCAPED_END)?;
            let s = &text[pos + 1..text_end];
            let mut end = text_end;
            while text.get(end) == Some(&UNESCAPED_END) {
                end += 1;
            }
            Some((validated_str(s), end))
        }
        _ => None,
    }
}

/// Skips any value of a validated, rewritten JSON header at `pos`.
fn skip_json_value(text: &[u8], pos: usize) -> Option<usize> {
    match text.get(pos)? {
        b'"' | &UNESCAPED_START => json_str(text, pos).map(|(_, end)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut p = pos;
            loop {
                match *text.get(p)? {
                    b'"' | UNESCAPED_START => {
                        p = json_str(text, p)?.1;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(p + 1);
                        }
                    }
                    _ => {}
                }
                p += 1;
            }
        }
        _ => Some(scalar_end(text, pos)),
    }
}

/// The end of a number or `true`/`false`/`null` at `pos`.
#[inline]
fn scalar_end(text: &[u8], mut pos: usize) -> usize {
    while let Some(&b) = text.get(pos) {
        if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
            break;
        }
        pos += 1;
    }
    pos
}

/// The next non-null entry of a JSON `extFields` object, from `*pos` (just after `{` or `,`).
fn next_json<'a>(text: &'a [u8], pos: &mut usize) -> Option<(&'a str, &'a str)> {
    loop {
        let p = skip_json_ws(text, *pos);
        if *text.get(p)? == b'}' {
            *pos = text.len();
            return None;
        }
        let (key, p) = json_str(text, p)?;
        let p = skip_json_ws(text, p);
        let p = skip_json_ws(text, p + 1); // ':'
        let (value, p) = match *text.get(p)? {
            b'"' | UNESCAPED_START => {
                let (v, end) = json_str(text, p)?;
                (Some(v), end)
            }
            b'n' => (None, p + 4),
            _ => {
                let end = scalar_end(text, p);
                (Some(validated_str(&text[p..end])), end)
            }
        };
        let p = skip_json_ws(text, p);
        *pos = if text.get(p) == Some(&b',') {
            p + 1
        } else {
            text.len()
        };
        if let Some(value) = value {
            return Some((key, value));
        }
        if *pos >= text.len() {
            return None;
        }
    }
}

/// The last `remark` of a validated, rewritten JSON header: `None` if absent or `null`.
/// `ext_at` is the command's: a compacted `extFields` object there is skipped as such.
fn json_remark(text: &[u8], ext_at: u32) -> Option<&str> {
    if let [REMARK_AT, a, b, c, d, e, f, ..] = *text {
        let at = u32::from_be_bytes([0, a, b, c]) as usize;
        let close = u32::from_be_bytes([0, d, e, f]) as usize;
        let s = text.get(at + 1..close)?;
        return Some(validated_str(match text[at] {
            UNESCAPED_START => &s[..memchr::memchr(UNESCAPED_END, s).unwrap_or(s.len())],
            _ => s,
        }));
    }
    let compact_at = match ext_at & COMPACT_EXT {
        0 => usize::MAX,
        _ => (ext_at & !COMPACT_EXT) as usize,
    };
    let mut p = skip_json_ws(text, 0) + 1;
    let mut remark = None;
    loop {
        p = skip_json_ws(text, p);
        if *text.get(p)? == b'}' {
            return remark;
        }
        let (key, after) = json_str(text, p)?;
        p = skip_json_ws(text, skip_json_ws(text, after) + 1);
        if key == "remark" {
            remark = match *text.get(p)? {
                b'n' => {
                    p += 4;
                    None
                }
                _ => {
                    let (s, end) = json_str(text, p)?;
                    p = end;
                    Some(s)
                }
            };
        } else if p == compact_at {
            let mut rest = &text[p..];
            while next_compact(&mut rest).is_some() {}
            p = text.len() - rest.len();
        } else {
            p = skip_json_value(text, p)?;
        }
        p = skip_json_ws(text, p);
        if text.get(p) == Some(&b',') {
            p += 1;
        } else {
            return remark;
        }
    }
}

impl<'a> Iterator for ExtIter<'a> {
    type Item = (&'a str, &'a str);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self.walk {
            Walk::Binary => next_binary(&mut self.rest),
            Walk::Json => {
                // A copy: `next_json` is not inlined, and a reference to a field passed to it
                // would keep the whole iterator in memory.
                let mut pos = self.pos;
                let entry = next_json(self.rest, &mut pos);
                self.pos = pos;
                entry
            }
            Walk::Compact => next_compact(&mut self.rest),
            Walk::Owned => self.owned.next().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }

    /// One loop per way of walking (the choice made once, not at every entry).
    #[inline]
    fn fold<B, F>(mut self, init: B, mut f: F) -> B
    where
        F: FnMut(B, Self::Item) -> B,
    {
        let mut acc = init;
        match self.walk {
            Walk::Binary => {
                while let Some(entry) = next_binary(&mut self.rest) {
                    acc = f(acc, entry);
                }
            }
            Walk::Json => {
                while let Some(entry) = next_json(self.rest, &mut self.pos) {
                    acc = f(acc, entry);
                }
            }
            Walk::Compact => {
                while let Some(entry) = next_compact(&mut self.rest) {
                    acc = f(acc, entry);
                }
            }
            Walk::Owned => {
                for (k, v) in self.owned {
                    acc = f(acc, (k.as_str(), v.as_str()));
                }
            }
        }
        acc
    }
}

/// Where a command's remark, extension fields and body are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Built by the program: `buf` is the body, remark and fields are in `owned` (if any).
    Built,
    /// A decoded frame (prefix, header, body) with a JSON header.
    JsonFrame,
    /// A decoded frame with a ROCKETMQ header.
    RocketMqFrame,
    /// A decoded JSON header alone (no prefix, no body).
    JsonHeader,
    /// A decoded ROCKETMQ header alone.
    RocketMqHeader,
}

/// A built command's remark and extension fields.
#[derive(Clone, Default)]
struct Owned {
    remark: Option<HeaderStr>,
    ext: ExtFields,
}

/// The fixed fields a header decoder read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fixed {
    pub(crate) code: i32,
    pub(crate) language: LanguageCode,
    pub(crate) version: i32,
    pub(crate) opaque: i32,
    pub(crate) flag: i32,
    /// Whether the header holds a remark (a JSON `null` is none).
    pub(crate) has_remark: bool,
    /// Whether the header holds an extension field.
    pub(crate) has_ext: bool,
}

/// One remoting command: a request, a oneway request or a response.
///
/// `opaque` is the wire field that pairs a response with its request; `flag` bit 0 marks a response
/// and bit 1 a oneway request. Everything else is carried as the peer sent it.
///
/// The small fields are public. The remark, extension fields and body are read through
/// [`remark`](Command::remark), [`ext`](Command::ext) / [`ext_fields`](Command::ext_fields) and
/// [`body`](Command::body), and set through the `with_*`/`set_*` methods: a decoded command keeps
/// its whole frame as one [`Bytes`] and reads them from it in place, so decoding allocates nothing
/// and a command is 64 bytes whatever it carries. Changing the remark or the fields of a decoded
/// command copies them out first (one allocation); a built command keeps them in one boxed
/// allocation, made by the first `with_ext`/`with_remark`.
#[derive(Clone)]
pub struct Command {
    /// Request code (what to do) or response code (how it went).
    pub code: i32,
    /// The requester's id for the request; a response copies it.
    pub opaque: i32,
    /// Bit 0: response; bit 1: oneway. Other bits are carried untouched.
    pub flag: i32,
    /// The sender's release ordinal.
    pub version: i32,
    /// The sender's implementation language.
    pub language: LanguageCode,
    /// How this command's header is (or will be) serialized.
    pub serialize_type: SerializeType,
    layout: Layout,
    /// Decoded layouts: whether the header holds a remark (else [`Command::remark`] need not
    /// look).
    has_remark: bool,
    /// JSON layouts: where the `{` of the (last, non-empty) `extFields` object is in the header;
    /// 0 for none (the header's own `{` comes first, so no object starts at 0). ROCKETMQ
    /// layouts: where the extension block starts in the header if it holds an entry with a
    /// value, else 0.
    ext_at: u32,
    /// The frame (decoded layouts) or the body (built).
    buf: Bytes,
    owned: Option<Box<Owned>>,
}

/// The command is small, so moving it through results, events and queues is cheap.
const _: () = assert!(core::mem::size_of::<Command>() <= 64);

impl Command {
    /// A request with `code`, Remora's language and version, opaque 0 and no payload.
    pub fn request(code: i32) -> Self {
        Command {
            code,
            opaque: 0,
            flag: 0,
            version: DEFAULT_VERSION,
            language: LanguageCode::default(),
            serialize_type: SerializeType::Json,
            layout: Layout::Built,
            has_remark: false,
            ext_at: 0,
            buf: Bytes::new(),
            owned: None,
        }
    }

    /// A decoded command over `buf`, whose header the decoders validated.
    #[inline(always)]
    pub(crate) fn decoded(
        fixed: Fixed,
        ty: SerializeType,
        buf: Bytes,
        frame: bool,
        ext_at: u32,
    ) -> Self {
        // The flags first: a frame with fields to read never needs its body's length here.
        let body_empty = || match frame {
            false => true,
            true => match buf.get(5..8) {
                Some(&[a, b, c]) => buf.len() == 8 + u32::from_be_bytes([0, a, b, c]) as usize,
                _ => true,
            },
        };
        if !fixed.has_remark && !fixed.has_ext && body_empty() {
            // Nothing to read from the frame: let its memory go (a connection's read buffer can
            // then be reused in place).
            return Command::bare(fixed, ty);
        }
        let layout = match (ty, frame) {
            (SerializeType::Json, true) => Layout::JsonFrame,
            (SerializeType::RocketMq, true) => Layout::RocketMqFrame,
            (SerializeType::Json, false) => Layout::JsonHeader,
            (SerializeType::RocketMq, false) => Layout::RocketMqHeader,
        };
        Command::from_frame_parts(fixed, ty, layout, ext_at, buf)
    }

    /// A decoded command keeping `buf`, laid out as `layout` says.
    #[inline(always)]
    fn from_frame_parts(
        fixed: Fixed,
        ty: SerializeType,
        layout: Layout,
        ext_at: u32,
        buf: Bytes,
    ) -> Self {
        Command {
            code: fixed.code,
            opaque: fixed.opaque,
            flag: fixed.flag,
            version: fixed.version,
            language: fixed.language,
            serialize_type: ty,
            layout,
            has_remark: fixed.has_remark,
            ext_at,
            buf,
            owned: None,
        }
    }

    /// A decoded frame that the decoder found holds a remark, an extension field or a body
    /// (so the command keeps it): [`Command::decoded`] without looking again.
    #[inline(always)]
    pub(crate) fn decoded_frame(
        fixed: Fixed,
        ty: SerializeType,
        frame: Bytes,
        ext_at: u32,
    ) -> Self {
        let layout = match ty {
            SerializeType::Json => Layout::JsonFrame,
            SerializeType::RocketMq => Layout::RocketMqFrame,
        };
        Command::from_frame_parts(fixed, ty, layout, ext_at, frame)
    }

    /// A decoded command with nothing but its fixed fields (no remark, fields or body).
    #[inline]
    pub(crate) fn bare(fixed: Fixed, ty: SerializeType) -> Self {
        Command {
            code: fixed.code,
            opaque: fixed.opaque,
            flag: fixed.flag,
            version: fixed.version,
            language: fixed.language,
            serialize_type: ty,
            ..Command::request(0)
        }
    }

    /// Whether the command holds no remark and no extension fields, known without looking (a
    /// built command that never had any, or a decoded one whose header held none).
    #[inline]
    pub(crate) fn is_bare(&self) -> bool {
        match self.layout {
            Layout::Built => self.owned.is_none(),
            _ => false,
        }
    }

    /// A built command's extension entries, for the encoders (`None` for a decoded command,
    /// whose fields are read from its frame with [`Command::ext_fields`]).
    #[inline]
    pub(crate) fn built_ext(&self) -> Option<&[(HeaderStr, HeaderStr)]> {
        match self.layout {
            Layout::Built => Some(match &self.owned {
                Some(owned) => &owned.ext.entries,
                None => &[],
            }),
            _ => None,
        }
    }

    /// A oneway request with `code`: the peer will not answer it.
    pub fn oneway(code: i32) -> Self {
        let mut cmd = Command::request(code);
        cmd.flag |= FLAG_ONEWAY;
        cmd
    }

    /// A response to this request: same opaque and serialize type, response bit set, given `code`.
    pub fn response(&self, code: i32) -> Self {
        Command {
            opaque: self.opaque,
            flag: FLAG_RESPONSE,
            serialize_type: self.serialize_type,
            ..Command::request(code)
        }
    }

    /// Whether flag bit 0 (response) is set.
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    /// Whether flag bit 1 (oneway) is set.
    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    /// Sets or clears the response bit.
    pub fn set_response(&mut self, on: bool) {
        self.set_flag_bit(FLAG_RESPONSE, on);
    }

    /// Sets or clears the oneway bit.
    pub fn set_oneway(&mut self, on: bool) {
        self.set_flag_bit(FLAG_ONEWAY, on);
    }

    fn set_flag_bit(&mut self, bit: i32, on: bool) {
        if on {
            self.flag |= bit;
        } else {
            self.flag &= !bit;
        }
    }

    /// The header bytes of a decoded command (empty for a built one).
    #[inline]
    fn header(&self) -> &[u8] {
        match self.layout {
            Layout::Built => &[],
            Layout::JsonHeader | Layout::RocketMqHeader => &self.buf,
            Layout::JsonFrame | Layout::RocketMqFrame => {
                let end = self.body_start();
                self.buf.get(8..end).unwrap_or(&[])
            }
        }
    }

    /// Where the body starts in `buf`.
    #[inline]
    fn body_start(&self) -> usize {
        match self.layout {
            Layout::Built => 0,
            Layout::JsonHeader | Layout::RocketMqHeader => self.buf.len(),
            Layout::JsonFrame | Layout::RocketMqFrame => match self.buf.get(5..8) {
                // The marker's 24-bit header length, checked against the frame when decoded.
                Some(&[a, b, c]) => 8 + u32::from_be_bytes([0, a, b, c]) as usize,
                _ => self.buf.len(),
            },
        }
    }

    /// The remark, if any: free text, mostly the reason of an error response.
    #[inline]
    pub fn remark(&self) -> Option<&str> {
        if self.layout != Layout::Built && !self.has_remark {
            return None;
        }
        match self.layout {
            Layout::Built => self.owned.as_ref()?.remark.as_deref(),
            Layout::RocketMqFrame | Layout::RocketMqHeader => {
                let h = self.header();
                let len = u32::from_be_bytes(h.get(13..17)?.try_into().ok()?) as usize;
                (len > 0).then(|| validated_str(h.get(17..17 + len).unwrap_or(&[])))
            }
            Layout::JsonFrame | Layout::JsonHeader => json_remark(self.header(), self.ext_at),
        }
    }

    /// The extension fields (the request's or response's custom header), in wire order.
    #[inline]
    pub fn ext_fields(&self) -> Ext<'_> {
        let src = match self.layout {
            Layout::Built => match &self.owned {
                Some(owned) => ExtSrc::Owned(&owned.ext.entries),
                None => ExtSrc::Owned(&[]),
            },
            // Where the block starts, from the decoder (0: no entry with a value); its length
            // is just before it.
            Layout::RocketMqFrame | Layout::RocketMqHeader => match self.ext_at {
                0 => ExtSrc::Owned(&[]),
                at => {
                    let prefix = usize::from(self.layout == Layout::RocketMqFrame) * 8;
                    ExtSrc::Binary(binary_ext_block(&self.buf, prefix + at as usize))
                }
            },
            Layout::JsonFrame | Layout::JsonHeader => match self.ext_at {
                0 => ExtSrc::Owned(&[]),
                at if at & COMPACT_EXT != 0 => {
                    let at = (at & !COMPACT_EXT) as usize;
                    ExtSrc::Compact(self.header().get(at..).unwrap_or(&[]))
                }
                at => ExtSrc::Json(self.header().get(at as usize..).unwrap_or(&[])),
            },
        };
        Ext { src }
    }

    /// The value of extension field `key` (the last one, if the peer sent the key twice).
    #[inline]
    pub fn ext(&self, key: &str) -> Option<&str> {
        self.ext_fields().get(key)
    }

    /// The body: the opaque payload after the header.
    #[inline]
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_start()..).unwrap_or(&[])
    }

    /// The body as [`Bytes`]: a zero-copy handle on the frame (it keeps the frame alive).
    pub fn body_bytes(&self) -> Bytes {
        match self.layout {
            Layout::Built => self.buf.clone(),
            _ => self.buf.slice(self.body_start()..),
        }
    }

    /// The body, taken out of the command.
    pub fn into_body(self) -> Bytes {
        self.body_bytes()
    }

    /// The owned parts, copying a decoded command's remark and fields out first; afterwards
    /// `buf` holds only the body.
    fn owned(&mut self) -> &mut Owned {
        if self.layout != Layout::Built {
            let owned = Owned {
                remark: self.remark().map(HeaderStr::from),
                ext: self.ext_fields().to_ext_fields(),
            };
            self.buf = self.body_bytes();
            self.layout = Layout::Built;
            self.has_remark = false;
            self.ext_at = 0;
            self.owned = Some(Box::new(owned));
        }
        self.owned.get_or_insert_with(Box::default)
    }

    /// The extension fields to change (a decoded command's are copied out first).
    pub fn ext_fields_mut(&mut self) -> &mut ExtFields {
        &mut self.owned().ext
    }

    /// Replaces every extension field.
    pub fn set_ext_fields(&mut self, ext: ExtFields) {
        if ext.is_empty() && self.layout == Layout::Built && self.owned.is_none() {
            return;
        }
        self.owned().ext = ext;
    }

    /// Sets or clears the remark.
    pub fn set_remark(&mut self, remark: Option<HeaderStr>) {
        if remark.is_none() && self.layout == Layout::Built && self.owned.is_none() {
            return;
        }
        self.owned().remark = remark;
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: impl Into<Bytes>) {
        if self.layout != Layout::Built {
            self.owned();
        }
        self.buf = body.into();
    }

    /// Sets the remark.
    pub fn with_remark(mut self, remark: impl Into<HeaderStr>) -> Self {
        self.set_remark(Some(remark.into()));
        self
    }

    /// Sets an extension field.
    pub fn with_ext(mut self, key: impl Into<HeaderStr>, value: impl Into<HeaderStr>) -> Self {
        self.ext_fields_mut().insert(key, value);
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.set_body(body);
        self
    }

    /// Sets the opaque.
    pub fn with_opaque(mut self, opaque: i32) -> Self {
        self.opaque = opaque;
        self
    }

    /// Sets the header serialization.
    pub fn with_serialize_type(mut self, serialize_type: SerializeType) -> Self {
        self.serialize_type = serialize_type;
        self
    }
}

/// The extension block of a validated ROCKETMQ header that starts at `at` in `buf` (what the
/// decoder found; its length is the four bytes before it).
#[inline]
fn binary_ext_block(buf: &[u8], at: usize) -> &[u8] {
    let block = || -> Option<&[u8]> {
        let &len = buf.get(at.checked_sub(4)?..)?.first_chunk::<4>()?;
        buf.get(at..at + u32::from_be_bytes(len) as usize)
    };
    block().unwrap_or(&[])
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
            && self.opaque == other.opaque
            && self.flag == other.flag
            && self.version == other.version
            && self.language == other.language
            && self.serialize_type == other.serialize_type
            && self.remark() == other.remark()
            && self.ext_fields() == other.ext_fields()
            && self.body() == other.body()
    }
}

impl Eq for Command {}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("code", &self.code)
            .field("language", &self.language)
            .field("version", &self.version)
            .field("opaque", &self.opaque)
            .field("flag", &self.flag)
            .field("remark", &self.remark())
            .field("ext_fields", &self.ext_fields())
            .field("body", &Bytes::copy_from_slice(self.body()))
            .field("serialize_type", &self.serialize_type)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_str_rejects_invalid_utf8() {
        assert!(HeaderStr::from_utf8(Bytes::from_static(b"\xff\xfe")).is_err());
        assert!(HeaderStr::from_utf8(Bytes::from_static(b"ok \xe4\xb8")).is_err());
        let s = HeaderStr::from_utf8(Bytes::from_static("主题".as_bytes())).unwrap();
        assert_eq!(s.as_str(), "主题");
        assert!(s.is_inline());
        let long = "a long value that does not fit inline: 主题";
        let l = HeaderStr::from_utf8(Bytes::from_static(long.as_bytes())).unwrap();
        assert!(!l.is_inline());
        assert_eq!(l, long);
        assert_eq!(HeaderStr::from(String::from(long)).as_str(), long);
        assert_eq!(HeaderStr::EMPTY.as_str(), "");
        assert_eq!(core::mem::size_of::<HeaderStr>(), 32);
    }

    #[test]
    fn response_copies_opaque_and_sets_bit() {
        let req = Command::request(105)
            .with_opaque(-7)
            .with_serialize_type(SerializeType::RocketMq);
        let resp = req.response(0);
        assert_eq!(resp.opaque, -7);
        assert!(resp.is_response());
        assert!(!resp.is_oneway());
        assert_eq!(resp.serialize_type, SerializeType::RocketMq);
        assert!(Command::oneway(34).is_oneway());
    }

    #[test]
    fn ext_insert_replaces_in_place_and_get_sees_last() {
        use alloc::vec::Vec;
        let mut ext = ExtFields::new();
        ext.push("a", "1");
        ext.push("b", "2");
        ext.push("a", "3");
        assert_eq!(ext.get("a").unwrap(), "3");
        assert_eq!(ext.insert("a", "4").unwrap(), "1");
        assert_eq!(ext.get("a"), Some("4"));
        let keys: Vec<_> = ext.iter().collect();
        assert_eq!(keys, [("a", "4"), ("b", "2")]);
        assert_eq!(ext.remove("b").unwrap(), "2");
        assert_eq!(ext.len(), 1);
        assert!(ext.remove("zz").is_none());
    }

    #[test]
    fn language_names_round_trip_and_unknown_is_kept() {
        for code in 0..=13u8 {
            let name = LanguageCode(code).name().unwrap();
            assert_eq!(LanguageCode::from_name(name), Some(LanguageCode(code)));
        }
        assert_eq!(LanguageCode(200).name(), None);
        assert_eq!(LanguageCode::from_name("java"), None);
    }

    #[test]
    fn a_command_is_64_bytes() {
        assert_eq!(core::mem::size_of::<Command>(), 64);
    }

    /// `ext`'s entries, read one `next` at a time; asserting that `fold` (one loop per way of
    /// walking) reads the same ones, and that `get` finds each key's last value.
    fn entries(ext: Ext<'_>) -> alloc::vec::Vec<(&str, &str)> {
        use alloc::vec::Vec;
        let mut stepped = Vec::new();
        let mut it = ext.iter();
        // (A `for` loop steps with `next`.)
        for entry in it.by_ref() {
            stepped.push(entry);
        }
        assert_eq!(it.next(), None, "an iterator that ended stays ended");
        let folded = ext.iter().fold(Vec::new(), |mut v, entry| {
            v.push(entry);
            v
        });
        assert_eq!(stepped, folded);
        for &(key, _) in &stepped {
            let last = stepped.iter().rev().find(|(k, _)| *k == key).map(|e| e.1);
            assert_eq!(ext.get(key), last, "{key}");
        }
        assert_eq!(ext.get("no such key \u{1}"), None);
        assert_eq!(ext.len(), stepped.len());
        stepped
    }

    /// A ROCKETMQ block read back in wire order: common entries (one-byte key, short value)
    /// beside long keys, a value of 255 and of 256 bytes, empty values (dropped) and a key
    /// sent twice.
    #[test]
    fn binary_fields_read_back_in_wire_order() {
        use crate::Codec;
        use alloc::vec::Vec;
        let v255 = "x".repeat(255);
        let v256 = "y".repeat(256);
        let sent: [(&str, &str); 9] = [
            ("a", "1"),
            ("b", ""),
            ("long_key", "v"),
            ("c", &v255),
            ("d", &v256),
            ("", "empty key"),
            ("e", "\u{1}"),
            ("a", "again"),
            ("f", ""),
        ];
        let mut built = Command::request(310).with_serialize_type(SerializeType::RocketMq);
        for (k, v) in sent {
            built.ext_fields_mut().push(k, v);
        }
        let codec = Codec::default();
        let mut wire = bytes::BytesMut::new();
        codec.encode(&built, &mut wire).unwrap();
        let crate::Decoded::Command(decoded) = codec.decode(&mut wire).unwrap() else {
            panic!()
        };
        let read = entries(decoded.ext_fields());
        let expected: Vec<(&str, &str)> = sent.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        assert_eq!(entries(built.ext_fields()), sent);
        assert_eq!(read, expected);
        assert_eq!(decoded.ext("a"), Some("again"));
        assert_eq!(decoded.ext("c"), Some(v255.as_str()));
        assert_eq!(decoded.ext("b"), None);
        assert_eq!(decoded.ext_fields().len(), 7);
    }

    /// A ROCKETMQ command finds its extension block where the decoder saw it, through every
    /// decoding path (a stream, a whole frame, a header alone), with a remark before the block
    /// and bytes after it; a block of empty values only reads as no fields.
    #[test]
    fn binary_fields_are_found_where_the_decoder_saw_them() {
        use crate::{binary, Codec};
        use alloc::vec::Vec;
        let codec = Codec::default();
        for (remark, sent, trailer) in [
            (Some("说明"), &[("k", "v"), ("key", "value")][..], &b""[..]),
            (None, &[("k", "v")][..], &b"after"[..]),
            (Some("r"), &[("k", ""), ("j", "")][..], &b"xy"[..]),
        ] {
            let mut cmd = Command::request(7).with_serialize_type(SerializeType::RocketMq);
            if let Some(r) = remark {
                cmd = cmd.with_remark(r);
            }
            for &(k, v) in sent {
                cmd.ext_fields_mut().push(k, v);
            }
            let mut header = Vec::new();
            binary::encode_header(&cmd, &mut header);
            header.extend_from_slice(trailer);
            let mut wire = bytes::BytesMut::new();
            wire.extend_from_slice(&(4 + header.len() as u32 + 2).to_be_bytes());
            wire.extend_from_slice(&(header.len() as u32 | 1 << 24).to_be_bytes());
            wire.extend_from_slice(&header);
            wire.extend_from_slice(b"zz");
            let frame = wire.clone().freeze();
            let crate::Decoded::Command(streamed) = codec.decode(&mut wire).unwrap() else {
                panic!()
            };
            let whole = codec.decode_frame(&frame).unwrap();
            let alone = binary::decode_header(&bytes::Bytes::from(header), codec.limits()).unwrap();
            let expected: Vec<(&str, &str)> = sent
                .iter()
                .copied()
                .filter(|(_, v)| !v.is_empty())
                .collect();
            for decoded in [&streamed, &whole, &alone] {
                let read = entries(decoded.ext_fields());
                assert_eq!(read, expected);
                assert_eq!(decoded.remark(), remark);
            }
            assert_eq!(streamed.body(), b"zz");
            assert_eq!(whole.body(), b"zz");
        }
    }

    /// A compacted JSON `extFields` object reads the same through the usual-entry path of
    /// `next_compact` as through the general reader alone: plain strings, strings unescaping
    /// shorter by 1 (a padding `"`) and by 2 or more (a skip), empty ones, keys and values of
    /// 127, 128, 255 and 256 bytes, a key sent twice, at every place in the object. It fails if
    /// the fast path takes an entry the general reader reads otherwise.
    #[test]
    fn compacted_json_fields_read_as_the_general_reader_reads_them() {
        use crate::Codec;
        use alloc::string::String;
        use alloc::vec::Vec;
        let long: Vec<String> = [127, 128, 255, 256]
            .iter()
            .map(|&n| "z".repeat(n))
            .collect();
        let texts: Vec<&str> = [
            "v",
            "",
            r"line\nbreak",
            r"a\u0001b",
            r"\u00e9t\u00e9",
            "TopicTest",
            r#"tab\tq\""#,
        ]
        .into_iter()
        .chain(long.iter().map(String::as_str))
        .collect();
        // Keys on both sides of a short key slot's 63 bytes.
        let (key63, key64) = ("q".repeat(63), "r".repeat(64));
        let keys = ["k", r"key\n", "a", &key63, &key64];
        let codec = Codec::default();
        let (mut compacted, mut short) = (0, 0);
        for (i, first) in texts.iter().enumerate() {
            for (j, second) in texts.iter().enumerate() {
                let key = keys[(i + j) % keys.len()];
                let header = alloc::format!(
                    r#"{{"code":310,"extFields":{{"{key}":"{first}","b":"{second}","{second}":"x","a":"{first}"}},"flag":0,"language":"JAVA","opaque":1,"serializeTypeCurrentRPC":"JSON","version":453}}"#
                );
                let mut wire = bytes::BytesMut::new();
                wire.extend_from_slice(&(header.len() as u32 + 4).to_be_bytes());
                wire.extend_from_slice(&(header.len() as u32).to_be_bytes());
                wire.extend_from_slice(header.as_bytes());
                // The same frame read as sent (not rewritten): what every reading must give.
                let sent = codec.decode_frame(&wire.clone().freeze()).unwrap();
                let want = entries(sent.ext_fields());
                assert_eq!(want.len(), 4, "{header}");
                let crate::Decoded::Command(cmd) = codec.decode(&mut wire).unwrap() else {
                    panic!("{header}")
                };
                assert_eq!(entries(cmd.ext_fields()), want, "{header}");
                let ExtSrc::Compact(block) = cmd.ext_fields().src else {
                    // Not compacted: read as sent (the `Json` walk).
                    assert_eq!(entries(cmd.ext_fields()).len(), 4, "{header}");
                    continue;
                };
                compacted += 1;
                let fast = entries(cmd.ext_fields());
                let mut rest = block;
                let mut general = Vec::new();
                while let (Some(entry), after) = next_compact_general(rest) {
                    general.push(entry);
                    rest = after;
                }
                assert_eq!(fast, general, "{header}");
                assert!(!fast.is_empty(), "{header}");
                // Every short key slot says its entry's two lengths.
                for (k, v) in &general {
                    let at = k.as_ptr() as usize - block.as_ptr() as usize - 2;
                    if block[at] >= 0xC0 {
                        assert_eq!(
                            (usize::from(block[at] & 0x3F), usize::from(block[at + 1])),
                            (k.len(), v.len()),
                            "{header}"
                        );
                        short += 1;
                    }
                }
            }
        }
        // Most of them were compacted (more than four escaped strings are not), and most of
        // their entries with a key under 64 bytes and a value under 256 have a short slot.
        assert!(compacted > texts.len() * texts.len() / 2, "{compacted}");
        assert!(
            short > compacted / 2,
            "{short} short slots in {compacted} objects"
        );
    }

    #[test]
    fn changing_a_decoded_command_copies_its_fields_out() {
        use crate::Codec;
        let codec = Codec::default();
        let built = Command::request(310)
            .with_opaque(5)
            .with_remark("why\u{1}")
            .with_ext("topic", "T")
            .with_ext("props", "K\u{1}V")
            .with_body(&b"payload"[..]);
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            let mut wire = bytes::BytesMut::new();
            codec.encode_as(&built, ty, &mut wire).unwrap();
            let crate::Decoded::Command(decoded) = codec.decode(&mut wire).unwrap() else {
                panic!()
            };
            assert_eq!(decoded.remark(), Some("why\u{1}"));
            assert_eq!(decoded.ext("props"), Some("K\u{1}V"));
            assert_eq!(decoded.body(), b"payload");
            assert_eq!(&decoded.body_bytes()[..], b"payload");

            let mut changed = decoded.clone().with_ext("topic", "U");
            assert_eq!(changed.ext("topic"), Some("U"));
            assert_eq!(changed.ext("props"), Some("K\u{1}V"));
            assert_eq!(changed.remark(), Some("why\u{1}"));
            assert_eq!(changed.body(), b"payload");
            changed.set_body(&b"other"[..]);
            changed.set_remark(None);
            assert_eq!((changed.body(), changed.remark()), (&b"other"[..], None));

            let mut body_only = decoded.clone();
            body_only.set_body(Bytes::new());
            assert_eq!(body_only.ext_fields(), decoded.ext_fields());
            assert_eq!(decoded.clone().into_body(), &b"payload"[..]);
        }
    }
}
