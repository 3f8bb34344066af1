//! The command model: what one remoting frame carries.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use bytes::Bytes;

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
}

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

    /// `src[range]` if it is UTF-8: copied inline when short, a zero-copy slice otherwise.
    pub(crate) fn from_utf8_slice(
        src: &Bytes,
        range: core::ops::Range<usize>,
    ) -> Result<Self, core::str::Utf8Error> {
        let s = core::str::from_utf8(&src[range.clone()])?;
        Ok(if s.len() <= INLINE {
            Self::inline(s)
        } else {
            Self(Repr::Shared(src.slice(range)))
        })
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
    pub fn as_str(&self) -> &str {
        let bytes = self.as_bytes();
        // SAFETY: every constructor checks that the bytes are UTF-8 (`from_utf8`,
        // `from_utf8_slice`) or copies them from a `str`/`String`; inline bytes are a copy of a
        // `str`'s, and neither representation is mutated afterwards.
        // `tests::header_str_rejects_invalid_utf8` checks the fallible constructors.
        unsafe { core::str::from_utf8_unchecked(bytes) }
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Shared(b) => b,
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

/// Extension fields: string keys to string values, in insertion (wire) order.
///
/// Decoding keeps every entry as it came, duplicates included; [`ExtFields::get`] returns the last
/// value for a key, which is what Java's `HashMap` ends up holding. [`ExtFields::insert`] replaces a
/// key's value in place.
///
/// A decoded set is compact: one shared reference to the frame's header (plus, for JSON strings
/// that held escapes, one buffer of their unescaped text) and 16 bytes of positions per entry,
/// so decoding touches no reference count per field and validates UTF-8 once. The first
/// [`insert`](ExtFields::insert) or [`remove`](ExtFields::remove) turns it into owned strings.
#[derive(Clone, Default)]
pub struct ExtFields {
    repr: ExtRepr,
}

#[derive(Clone)]
enum ExtRepr {
    /// Entries whose text lies in `src` (or, with [`SIDE`] set in the start, in `side`).
    Spans {
        src: Bytes,
        side: Bytes,
        spans: Vec<Span>,
    },
    Owned(Vec<(HeaderStr, HeaderStr)>),
}

impl Default for ExtRepr {
    fn default() -> Self {
        ExtRepr::Owned(Vec::new())
    }
}

/// Where one entry's key and value lie: `(start, len)` each; a start with [`SIDE`] set counts in
/// the side buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) key: (u32, u32),
    pub(crate) value: (u32, u32),
}

/// Marks a span start as counting in the side buffer (headers are far below 2 GiB).
pub(crate) const SIDE: u32 = 1 << 31;

/// Iterator over [`ExtFields`] entries, in order.
pub struct ExtIter<'a> {
    inner: ExtIterInner<'a>,
}

enum ExtIterInner<'a> {
    Spans {
        src: &'a [u8],
        side: &'a [u8],
        spans: core::slice::Iter<'a, Span>,
    },
    Owned(core::slice::Iter<'a, (HeaderStr, HeaderStr)>),
}

fn span_str<'a>(src: &'a [u8], side: &'a [u8], (start, len): (u32, u32)) -> &'a str {
    let (buf, start) = if start & SIDE != 0 {
        (side, start & !SIDE)
    } else {
        (src, start)
    };
    let bytes = &buf[start as usize..start as usize + len as usize];
    debug_assert!(core::str::from_utf8(bytes).is_ok(), "span is not UTF-8");
    // SAFETY: spans are made only by the decoders (`ExtFields::from_spans`), which validated
    // every span as UTF-8 before (JSON: the whole header at once, and unescaping only produces
    // UTF-8; ROCKETMQ: each string), and `src`/`side` are immutable `Bytes`. The debug assertion
    // above re-checks it in every test, property test and fuzz run.
    unsafe { core::str::from_utf8_unchecked(bytes) }
}

impl<'a> Iterator for ExtIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            ExtIterInner::Spans { src, side, spans } => spans
                .next()
                .map(|s| (span_str(src, side, s.key), span_str(src, side, s.value))),
            ExtIterInner::Owned(it) => it.next().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.inner {
            ExtIterInner::Spans { spans, .. } => spans.len(),
            ExtIterInner::Owned(it) => it.len(),
        };
        (n, Some(n))
    }
}

impl DoubleEndedIterator for ExtIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            ExtIterInner::Spans { src, side, spans } => spans
                .next_back()
                .map(|s| (span_str(src, side, s.key), span_str(src, side, s.value))),
            ExtIterInner::Owned(it) => it.next_back().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }
}

impl ExactSizeIterator for ExtIter<'_> {}

impl ExtFields {
    /// No fields.
    pub const fn new() -> Self {
        Self {
            repr: ExtRepr::Owned(Vec::new()),
        }
    }

    /// No fields, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            repr: ExtRepr::Owned(Vec::with_capacity(n)),
        }
    }

    /// Fields decoded from `src` (and `side`); every span MUST already be validated UTF-8.
    pub(crate) fn from_spans(src: Bytes, side: Bytes, spans: Vec<Span>) -> Self {
        if spans.is_empty() {
            return Self::new();
        }
        Self {
            repr: ExtRepr::Spans { src, side, spans },
        }
    }

    /// The number of entries (duplicates counted).
    pub fn len(&self) -> usize {
        match &self.repr {
            ExtRepr::Spans { spans, .. } => spans.len(),
            ExtRepr::Owned(v) => v.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key` (the last one, if the peer sent the key twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The entries in order.
    pub fn iter(&self) -> ExtIter<'_> {
        ExtIter {
            inner: match &self.repr {
                ExtRepr::Spans { src, side, spans } => ExtIterInner::Spans {
                    src,
                    side,
                    spans: spans.iter(),
                },
                ExtRepr::Owned(v) => ExtIterInner::Owned(v.iter()),
            },
        }
    }

    /// The owned form, converting a decoded set first.
    fn owned(&mut self) -> &mut Vec<(HeaderStr, HeaderStr)> {
        if let ExtRepr::Spans { src, side, spans } = &self.repr {
            let strings = |(start, len): (u32, u32)| {
                let (buf, start) = if start & SIDE != 0 {
                    (side, start & !SIDE)
                } else {
                    (src, start)
                };
                let range = start as usize..start as usize + len as usize;
                HeaderStr::from_utf8_slice(buf, range).expect("decoded spans are UTF-8")
            };
            let owned = spans
                .iter()
                .map(|s| (strings(s.key), strings(s.value)))
                .collect();
            self.repr = ExtRepr::Owned(owned);
        }
        match &mut self.repr {
            ExtRepr::Owned(v) => v,
            ExtRepr::Spans { .. } => unreachable!("converted above"),
        }
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
        let entries = self.owned();
        let mut old = None;
        let mut found = false;
        entries.retain_mut(|(k, v)| {
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
            entries.push((key, value));
        }
        old
    }

    /// Removes every entry for `key`, returning the value that [`ExtFields::get`] would have.
    pub fn remove(&mut self, key: &str) -> Option<HeaderStr> {
        self.get(key)?;
        let mut last = None;
        self.owned().retain(|(k, v)| {
            if k.as_str() == key {
                last = Some(v.clone());
                false
            } else {
                true
            }
        });
        last
    }

    /// Appends an entry without looking for the key.
    #[cfg(test)]
    pub(crate) fn push(&mut self, key: HeaderStr, value: HeaderStr) {
        self.owned().push((key, value));
    }
}

impl PartialEq for ExtFields {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ExtFields {}

impl core::hash::Hash for ExtFields {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.len().hash(state);
        for (k, v) in self.iter() {
            k.hash(state);
            v.hash(state);
        }
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

/// One remoting command: a request, a oneway request or a response.
///
/// `opaque` is the wire field that pairs a response with its request; `flag` bit 0 marks a response
/// and bit 1 a oneway request. Everything else is carried as the peer sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Request code (what to do) or response code (how it went).
    pub code: i32,
    /// The sender's implementation language.
    pub language: LanguageCode,
    /// The sender's release ordinal.
    pub version: i32,
    /// The requester's id for the request; a response copies it.
    pub opaque: i32,
    /// Bit 0: response; bit 1: oneway. Other bits are carried untouched.
    pub flag: i32,
    /// Free text, mostly the reason of an error response.
    pub remark: Option<HeaderStr>,
    /// Extension fields: the request's or response's custom header.
    pub ext_fields: ExtFields,
    /// The opaque payload after the header.
    pub body: Bytes,
    /// How this command's header is (or will be) serialized.
    pub serialize_type: SerializeType,
}

impl Command {
    /// A request with `code`, Remora's language and version, opaque 0 and no payload.
    pub fn request(code: i32) -> Self {
        Command {
            code,
            language: LanguageCode::default(),
            version: DEFAULT_VERSION,
            opaque: 0,
            flag: 0,
            remark: None,
            ext_fields: ExtFields::new(),
            body: Bytes::new(),
            serialize_type: SerializeType::Json,
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
            code,
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

    /// Sets the remark.
    pub fn with_remark(mut self, remark: impl Into<HeaderStr>) -> Self {
        self.remark = Some(remark.into());
        self
    }

    /// Sets an extension field.
    pub fn with_ext(mut self, key: impl Into<HeaderStr>, value: impl Into<HeaderStr>) -> Self {
        self.ext_fields.insert(key, value);
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
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
        let src = Bytes::from_static(b"xx\xff\xfe");
        assert!(HeaderStr::from_utf8_slice(&src, 0..4).is_err());
        assert_eq!(HeaderStr::from_utf8_slice(&src, 0..2).unwrap(), "xx");
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
        ext.push("a".into(), "1".into());
        ext.push("b".into(), "2".into());
        ext.push("a".into(), "3".into());
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
    fn decoded_spans_read_and_convert_on_write() {
        use alloc::vec;
        use alloc::vec::Vec;
        let src = Bytes::from_static(b"kvkeyvalue");
        let side = Bytes::from_static("é".as_bytes());
        let spans = vec![
            Span {
                key: (0, 1),
                value: (1, 1),
            },
            Span {
                key: (2, 3),
                value: (SIDE, 2),
            },
            Span {
                key: (0, 1),
                value: (5, 5),
            },
        ];
        let mut ext = ExtFields::from_spans(src, side, spans);
        assert_eq!(ext.len(), 3);
        assert_eq!(ext.get("k"), Some("value"), "the last duplicate wins");
        assert_eq!(ext.get("key"), Some("é"));
        let same: ExtFields = [("k", "v"), ("key", "é"), ("k", "value")].into_iter().fold(
            ExtFields::new(),
            |mut e, (k, v)| {
                e.push(k.into(), v.into());
                e
            },
        );
        assert_eq!(ext, same);
        assert_eq!(ext.insert("key", "x").as_deref(), Some("é"));
        assert_eq!(
            ext.iter().collect::<Vec<_>>(),
            [("k", "v"), ("key", "x"), ("k", "value")]
        );
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
}
