//! The JSON header (serialize type 0).
//!
//! Decoding accepts every dialect peers are known to send: keys in any order, unknown keys (skipped,
//! nesting bounded), explicit `null`s, `"remark":""`, `language` as a name or a number, integers
//! given as quoted strings (fastjson accepts them), raw control bytes inside strings, every JSON
//! escape including surrogate pairs, and whitespace around tokens and after the closing brace.
//! Fields missing from the header take Java's defaults: `language` JAVA, numbers 0, no remark.
//!
//! Encoding writes Java's canonical shape, which every peer accepts: keys in alphabetical order,
//! `remark` and an empty `extFields` omitted, `serializeTypeCurrentRPC` present, `"`, `\` and
//! control characters escaped, everything else (including non-ASCII) raw UTF-8.

use alloc::string::String;
use alloc::vec::Vec;

use bytes::{BufMut, Bytes};

use crate::command::{Command, ExtFields, HeaderStr, LanguageCode};
use crate::error::{DecodeError, JsonErrorKind};
use crate::frame::Limits;

/// Decodes a JSON header into a command with an empty body.
///
/// Strings without escapes are zero-copy slices of `header`.
pub fn decode_header(header: &Bytes, limits: &Limits) -> Result<Command, DecodeError> {
    Parser {
        buf: header,
        src: header,
        pos: 0,
        limits,
    }
    .header()
}

/// The exact length [`encode_header`] will write for `cmd`.
pub fn header_len(cmd: &Command) -> usize {
    let mut n = FIXED_LEN + cmd.serialize_type.name().len();
    n += int_len(cmd.code) + int_len(cmd.flag) + int_len(cmd.opaque) + int_len(cmd.version);
    n += match cmd.language.name() {
        Some(name) => name.len() + 2,
        None => int_len(i32::from(cmd.language.0)),
    };
    if let Some(remark) = &cmd.remark {
        n += REMARK_KEY.len() + escaped_len(remark.as_bytes()) + 1;
    }
    let ext = cmd.ext_fields.entries();
    if !ext.is_empty() {
        // `"extFields":{` + `}` + commas between entries + `"k":"v"` each.
        n += EXT_KEY.len() + 1 + (ext.len() - 1);
        for (k, v) in ext {
            n += escaped_len(k.as_bytes()) + escaped_len(v.as_bytes()) + 5;
        }
    }
    n
}

/// Writes `cmd`'s header in Java's canonical shape; exactly [`header_len`] bytes.
pub fn encode_header(cmd: &Command, dst: &mut impl BufMut) {
    let mut ints = itoa::Buffer::new();
    dst.put_slice(b"{\"code\":");
    dst.put_slice(ints.format(cmd.code).as_bytes());
    let ext = cmd.ext_fields.entries();
    if !ext.is_empty() {
        dst.put_slice(EXT_KEY);
        for (i, (k, v)) in ext.iter().enumerate() {
            if i > 0 {
                dst.put_u8(b',');
            }
            dst.put_u8(b'"');
            put_escaped(k.as_bytes(), dst);
            dst.put_slice(b"\":\"");
            put_escaped(v.as_bytes(), dst);
            dst.put_u8(b'"');
        }
        dst.put_u8(b'}');
    }
    dst.put_slice(b",\"flag\":");
    dst.put_slice(ints.format(cmd.flag).as_bytes());
    dst.put_slice(b",\"language\":");
    match cmd.language.name() {
        Some(name) => {
            dst.put_u8(b'"');
            dst.put_slice(name.as_bytes());
            dst.put_u8(b'"');
        }
        // A byte no peer names: the number is the only faithful spelling (Java accepts it).
        None => dst.put_slice(ints.format(cmd.language.0).as_bytes()),
    }
    dst.put_slice(b",\"opaque\":");
    dst.put_slice(ints.format(cmd.opaque).as_bytes());
    if let Some(remark) = &cmd.remark {
        dst.put_slice(REMARK_KEY);
        put_escaped(remark.as_bytes(), dst);
        dst.put_u8(b'"');
    }
    dst.put_slice(b",\"serializeTypeCurrentRPC\":\"");
    dst.put_slice(cmd.serialize_type.name().as_bytes());
    dst.put_slice(b"\",\"version\":");
    dst.put_slice(ints.format(cmd.version).as_bytes());
    dst.put_u8(b'}');
}

const EXT_KEY: &[u8] = b",\"extFields\":{";
const REMARK_KEY: &[u8] = b",\"remark\":\"";
/// Everything [`encode_header`] writes whatever the command holds, less the type name.
const FIXED_LEN: usize =
    r#"{"code":,"flag":,"language":,"opaque":,"serializeTypeCurrentRPC":"","version":}"#.len();

fn int_len(n: i32) -> usize {
    let mut len = usize::from(n < 0) + 1;
    let mut m = n.unsigned_abs();
    while m >= 10 {
        m /= 10;
        len += 1;
    }
    len
}

/// What each byte becomes inside a JSON string: 0 = itself, `u` = `\u00XX`, else `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

fn escaped_len(s: &[u8]) -> usize {
    let mut n = s.len();
    for &b in s {
        n += match ESCAPE[usize::from(b)] {
            0 => 0,
            b'u' => 5,
            _ => 1,
        };
    }
    n
}

fn put_escaped(s: &[u8], dst: &mut impl BufMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        dst.put_slice(&s[run..i]);
        if esc == b'u' {
            dst.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            dst.put_slice(&[b'\\', esc]);
        }
        run = i + 1;
    }
    dst.put_slice(&s[run..]);
}

enum Key {
    Code,
    Language,
    Version,
    Opaque,
    Flag,
    Remark,
    ExtFields,
    Other,
}

impl Key {
    fn from_bytes(key: &[u8]) -> Key {
        match key {
            b"code" => Key::Code,
            b"language" => Key::Language,
            b"version" => Key::Version,
            b"opaque" => Key::Opaque,
            b"flag" => Key::Flag,
            b"remark" => Key::Remark,
            b"extFields" => Key::ExtFields,
            _ => Key::Other,
        }
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    src: &'a Bytes,
    pos: usize,
    limits: &'a Limits,
}

type PResult<T> = core::result::Result<T, DecodeError>;

/// A string as found in the header: a range of it when it held no escape, or its unescaped copy.
enum RawStr {
    Slice(usize, usize),
    Owned(Vec<u8>),
}

impl<'a> Parser<'a> {
    fn error(&self, kind: JsonErrorKind) -> DecodeError {
        DecodeError::Json {
            offset: self.pos,
            kind,
        }
    }

    fn error_at(offset: usize, kind: JsonErrorKind) -> DecodeError {
        DecodeError::Json { offset, kind }
    }

    fn unexpected(&self, expected: &'static str) -> DecodeError {
        match self.buf.get(self.pos) {
            Some(&found) => self.error(JsonErrorKind::UnexpectedByte { found, expected }),
            None => self.error(JsonErrorKind::UnexpectedEnd),
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> PResult<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => Ok(b),
            None => Err(self.error(JsonErrorKind::UnexpectedEnd)),
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8, expected: &'static str) -> PResult<()> {
        if self.buf.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn header(mut self) -> PResult<Command> {
        let mut cmd = Command {
            language: LanguageCode::JAVA,
            version: 0,
            ..Command::request(0)
        };
        self.skip_ws();
        self.expect(b'{', "'{'")?;
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            loop {
                let key = self.key()?;
                self.skip_ws();
                self.expect(b':', "':'")?;
                self.skip_ws();
                match key {
                    Key::Code => cmd.code = self.int("code")?,
                    Key::Version => cmd.version = self.int("version")?,
                    Key::Opaque => cmd.opaque = self.int("opaque")?,
                    Key::Flag => cmd.flag = self.int("flag")?,
                    Key::Language => cmd.language = self.language()?,
                    Key::Remark => cmd.remark = self.remark()?,
                    Key::ExtFields => cmd.ext_fields = self.ext_fields()?,
                    Key::Other => self.skip_value(1)?,
                }
                self.skip_ws();
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.unexpected("',' or '}'")),
                }
            }
        }
        self.skip_ws();
        if self.pos != self.buf.len() {
            return Err(self.error(JsonErrorKind::TrailingCharacters));
        }
        Ok(cmd)
    }

    fn key(&mut self) -> PResult<Key> {
        if self.peek()? != b'"' {
            return Err(self.unexpected("a string key"));
        }
        Ok(match self.raw_string()? {
            RawStr::Slice(a, b) => Key::from_bytes(&self.buf[a..b]),
            RawStr::Owned(v) => Key::from_bytes(&v),
        })
    }

    /// Parses the string at `pos` (which holds `"`), leaving `pos` after its closing quote.
    fn raw_string(&mut self) -> PResult<RawStr> {
        let start = self.pos + 1;
        let mut at = start;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let Some(i) = memchr::memchr2(b'"', b'\\', &self.buf[at..]) else {
                self.pos = self.buf.len();
                return Err(self.error(JsonErrorKind::UnexpectedEnd));
            };
            let hit = at + i;
            if self.buf[hit] == b'"' {
                self.pos = hit + 1;
                let out = match owned {
                    None => RawStr::Slice(start, hit),
                    Some(mut v) => {
                        v.extend_from_slice(&self.buf[at..hit]);
                        RawStr::Owned(v)
                    }
                };
                let len = match &out {
                    RawStr::Slice(a, b) => b - a,
                    RawStr::Owned(v) => v.len(),
                };
                if len > self.limits.max_string_len {
                    return Err(DecodeError::StringTooLong {
                        offset: start - 1,
                        max: self.limits.max_string_len,
                    });
                }
                return Ok(out);
            }
            // A backslash: unescape into a copy (never longer than the escaped text).
            let v = owned.get_or_insert_with(|| Vec::with_capacity(hit - start + 16));
            v.extend_from_slice(&self.buf[at..hit]);
            self.pos = hit;
            let esc = *self
                .buf
                .get(hit + 1)
                .ok_or_else(|| Self::error_at(self.buf.len(), JsonErrorKind::UnexpectedEnd))?;
            at = hit + 2;
            let byte = match esc {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let (c, next) = self.unicode_escape(hit)?;
                    at = next;
                    let mut utf8 = [0u8; 4];
                    v.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    continue;
                }
                _ => return Err(self.error(JsonErrorKind::InvalidEscape)),
            };
            v.push(byte);
        }
    }

    /// Reads `\uXXXX` (and its low surrogate, if it is a high one) at `at`; returns the char and
    /// the offset after the escape(s).
    fn unicode_escape(&self, at: usize) -> PResult<(char, usize)> {
        let first = self.hex4(at + 2)?;
        let (code, next) = match first {
            0xD800..=0xDBFF => {
                if self.buf.get(at + 6..at + 8) != Some(b"\\u") {
                    return Err(Self::error_at(at, JsonErrorKind::InvalidEscape));
                }
                let low = self.hex4(at + 8)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(Self::error_at(at, JsonErrorKind::InvalidEscape));
                }
                (
                    0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(low) - 0xDC00),
                    at + 12,
                )
            }
            0xDC00..=0xDFFF => return Err(Self::error_at(at, JsonErrorKind::InvalidEscape)),
            _ => (u32::from(first), at + 6),
        };
        match char::from_u32(code) {
            Some(c) => Ok((c, next)),
            None => Err(Self::error_at(at, JsonErrorKind::InvalidEscape)),
        }
    }

    fn hex4(&self, at: usize) -> PResult<u16> {
        let Some(digits) = self.buf.get(at..at + 4) else {
            return Err(Self::error_at(self.buf.len(), JsonErrorKind::UnexpectedEnd));
        };
        let mut n = 0u16;
        for (i, &d) in digits.iter().enumerate() {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Self::error_at(at + i, JsonErrorKind::InvalidEscape)),
            };
            n = n << 4 | u16::from(v);
        }
        Ok(n)
    }

    /// A string value as a [`HeaderStr`], zero-copy when it held no escape.
    fn string(&mut self) -> PResult<HeaderStr> {
        let start = self.pos;
        let raw = self.raw_string()?;
        let invalid = || Self::error_at(start, JsonErrorKind::InvalidUtf8);
        match raw {
            RawStr::Slice(a, b) => {
                HeaderStr::from_utf8_slice(self.src, a..b).map_err(|_| invalid())
            }
            RawStr::Owned(v) => String::from_utf8(v)
                .map(HeaderStr::from)
                .map_err(|_| invalid()),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> PResult<()> {
        if self.buf.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.unexpected("a JSON value"))
        }
    }

    /// An integer field: a number, a quoted number (fastjson accepts both), or `null` (0).
    fn int(&mut self, field: &'static str) -> PResult<i32> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => {
                let start = self.pos;
                let (a, b) = match self.raw_string()? {
                    RawStr::Slice(a, b) => (a, b),
                    RawStr::Owned(_) => {
                        return Err(Self::error_at(start, JsonErrorKind::WrongType { field }))
                    }
                };
                parse_i32(&self.buf[a..b])
                    .ok_or_else(|| Self::error_at(start, JsonErrorKind::WrongType { field }))
            }
            b'n' => self.literal(b"null").map(|()| 0),
            _ => Err(self.error(JsonErrorKind::WrongType { field })),
        }
    }

    fn number(&mut self) -> PResult<i32> {
        let start = self.pos;
        let mut end = start + usize::from(self.buf[start] == b'-');
        while let Some(b'0'..=b'9') = self.buf.get(end) {
            end += 1;
        }
        if let Some(b'.' | b'e' | b'E') = self.buf.get(end) {
            return Err(Self::error_at(start, JsonErrorKind::NumberOutOfRange));
        }
        self.pos = end;
        match parse_i32(&self.buf[start..end]) {
            Some(n) => Ok(n),
            None if end == start + 1 => Err(self.unexpected("a digit")),
            None => Err(Self::error_at(start, JsonErrorKind::NumberOutOfRange)),
        }
    }

    fn language(&mut self) -> PResult<LanguageCode> {
        match self.peek()? {
            b'"' => {
                let name = self.raw_string()?;
                let name = match &name {
                    RawStr::Slice(a, b) => &self.buf[*a..*b],
                    RawStr::Owned(v) => v.as_slice(),
                };
                // fastjson turns a name it does not know into null; OTHER is the closest we have.
                Ok(LanguageCode::from_name_bytes(name).unwrap_or(LanguageCode::OTHER))
            }
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                let n = self.number()?;
                u8::try_from(n)
                    .map(LanguageCode)
                    .map_err(|_| Self::error_at(start, JsonErrorKind::NumberOutOfRange))
            }
            b'n' => self.literal(b"null").map(|()| LanguageCode::JAVA),
            _ => Err(self.error(JsonErrorKind::WrongType { field: "language" })),
        }
    }

    fn remark(&mut self) -> PResult<Option<HeaderStr>> {
        match self.peek()? {
            b'"' => self.string().map(Some),
            b'n' => self.literal(b"null").map(|()| None),
            _ => Err(self.error(JsonErrorKind::WrongType { field: "remark" })),
        }
    }

    fn ext_fields(&mut self) -> PResult<ExtFields> {
        match self.peek()? {
            b'{' => {}
            b'n' => return self.literal(b"null").map(|()| ExtFields::new()),
            _ => return Err(self.error(JsonErrorKind::WrongType { field: "extFields" })),
        }
        self.pos += 1;
        let mut ext = ExtFields::new();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(ext);
        }
        loop {
            if self.peek()? != b'"' {
                return Err(self.unexpected("a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':', "':'")?;
            self.skip_ws();
            let value = match self.peek()? {
                b'"' => Some(self.string()?),
                // Java's Map<String, String> holds null: the same as absent.
                b'n' => self.literal(b"null").map(|()| None)?,
                // fastjson stores a number or boolean as its text.
                b'-' | b'0'..=b'9' | b't' | b'f' => {
                    let start = self.pos;
                    self.skip_scalar()?;
                    if self.pos - start > self.limits.max_string_len {
                        return Err(DecodeError::StringTooLong {
                            offset: start,
                            max: self.limits.max_string_len,
                        });
                    }
                    Some(
                        HeaderStr::from_utf8(self.src.slice(start..self.pos))
                            .map_err(|_| Self::error_at(start, JsonErrorKind::InvalidUtf8))?,
                    )
                }
                _ => return Err(self.error(JsonErrorKind::WrongType { field: "extFields" })),
            };
            if let Some(value) = value {
                if ext.len() == self.limits.max_ext_fields {
                    return Err(DecodeError::TooManyExtFields {
                        max: self.limits.max_ext_fields,
                    });
                }
                ext.push(key, value);
            }
            self.skip_ws();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.skip_ws();
                }
                b'}' => {
                    self.pos += 1;
                    return Ok(ext);
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    /// Skips a number or `true`/`false`/`null`.
    fn skip_scalar(&mut self) -> PResult<()> {
        match self.peek()? {
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                self.pos += 1;
                while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') =
                    self.buf.get(self.pos)
                {
                    self.pos += 1;
                }
                if self.buf[start..self.pos].iter().any(u8::is_ascii_digit) {
                    Ok(())
                } else {
                    Err(self.unexpected("a digit"))
                }
            }
            _ => Err(self.unexpected("a JSON value")),
        }
    }

    /// Skips any value, nested at most `max_json_depth` levels below the header object.
    fn skip_value(&mut self, depth: usize) -> PResult<()> {
        match self.peek()? {
            b'"' => self.raw_string().map(drop),
            open @ (b'{' | b'[') => {
                if depth >= self.limits.max_json_depth {
                    return Err(self.error(JsonErrorKind::TooDeep));
                }
                let close = if open == b'{' { b'}' } else { b']' };
                self.pos += 1;
                self.skip_ws();
                if self.peek()? == close {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        if self.peek()? != b'"' {
                            return Err(self.unexpected("a string key"));
                        }
                        self.raw_string()?;
                        self.skip_ws();
                        self.expect(b':', "':'")?;
                        self.skip_ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.peek()? {
                        b',' => {
                            self.pos += 1;
                            self.skip_ws();
                        }
                        b if b == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(self.unexpected("',' or a closing bracket")),
                    }
                }
            }
            _ => self.skip_scalar(),
        }
    }
}

/// Parses an optionally negative run of ASCII digits within `i32`.
fn parse_i32(digits: &[u8]) -> Option<i32> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    i32::try_from(if neg { -n } else { n }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SerializeType;
    use alloc::format;
    use alloc::vec;

    fn decode(s: &str) -> Result<Command, DecodeError> {
        decode_header(&Bytes::copy_from_slice(s.as_bytes()), &Limits::default())
    }

    fn encode(cmd: &Command) -> String {
        let mut out = vec![];
        encode_header(cmd, &mut out);
        assert_eq!(
            out.len(),
            header_len(cmd),
            "header_len disagrees with encode_header"
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_shape_is_alphabetical_with_nulls_omitted() {
        let cmd = Command::request(105).with_opaque(3).with_ext("topic", "T");
        assert_eq!(
            encode(&cmd),
            r#"{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"OTHER","opaque":3,"serializeTypeCurrentRPC":"JSON","version":479}"#
        );
        let mut resp = cmd.response(-17).with_remark("a\"b\\c\u{1}\n\u{7f}é");
        resp.language = LanguageCode(99);
        resp.serialize_type = SerializeType::RocketMq;
        assert_eq!(
            encode(&resp),
            "{\"code\":-17,\"flag\":1,\"language\":99,\"opaque\":3,\"remark\":\"a\\\"b\\\\c\\u0001\\n\u{7f}é\",\"serializeTypeCurrentRPC\":\"ROCKETMQ\",\"version\":479}"
        );
    }

    #[test]
    fn dialects_decode() {
        // Go: struct order, empty remark, no serializeTypeCurrentRPC.
        let go = decode(r#"{"code":105,"language":"GO","version":317,"opaque":7,"flag":0,"remark":"","extFields":{"topic":"t"}}"#).unwrap();
        assert_eq!(
            (go.code, go.language, go.version, go.opaque),
            (105, LanguageCode::GO, 317, 7)
        );
        assert_eq!(go.remark.as_deref(), Some(""));
        assert_eq!(go.ext_fields.get("topic").unwrap(), "t");
        // C++: trailing newline; Python: numeric language; unknown keys of every shape.
        let cpp = decode("{\"code\":1,\"language\":3,\"x\":[1,{\"y\":[true,false,null,-1.5e3]}],\"z\":\"\\u00e9\"}\n\r\t ").unwrap();
        assert_eq!(cpp.language, LanguageCode::PYTHON);
        // Missing fields take Java's defaults.
        let empty = decode("{}").unwrap();
        assert_eq!(
            (empty.code, empty.language, empty.version, empty.remark),
            (0, LanguageCode::JAVA, 0, None)
        );
        // Quoted integers, null fields, numeric and boolean ext values, null ext values dropped.
        let lenient = decode(
            r#"{"code":"12","flag":null,"remark":null,"extFields":{"a":1,"b":true,"c":null}}"#,
        )
        .unwrap();
        assert_eq!(lenient.code, 12);
        assert_eq!(lenient.ext_fields.get("a").unwrap(), "1");
        assert_eq!(lenient.ext_fields.get("b").unwrap(), "true");
        assert!(lenient.ext_fields.get("c").is_none());
    }

    #[test]
    fn escapes_and_raw_control_bytes() {
        let cmd =
            decode("{\"remark\":\"\\ud83d\\ude80 \\\" \\/ \\b\\f\\n\\r\\t \u{1}\u{2}\"}").unwrap();
        assert_eq!(cmd.remark.unwrap(), "🚀 \" / \u{8}\u{c}\n\r\t \u{1}\u{2}");
        let key = decode(r#"{"c\u006fde":5}"#).unwrap();
        assert_eq!(key.code, 5);
    }

    #[test]
    fn malformed_headers_are_located() {
        let cases: &[(&str, usize, JsonErrorKind)] = &[
            ("", 0, JsonErrorKind::UnexpectedEnd),
            ("{\"code\":1", 9, JsonErrorKind::UnexpectedEnd),
            ("{\"code\":1}x", 10, JsonErrorKind::TrailingCharacters),
            ("{\"code\":2147483648}", 8, JsonErrorKind::NumberOutOfRange),
            ("{\"code\":1.5}", 8, JsonErrorKind::NumberOutOfRange),
            (
                "{\"code\":\"ten\"}",
                8,
                JsonErrorKind::WrongType { field: "code" },
            ),
            ("{\"remark\":\"\\ud800\"}", 11, JsonErrorKind::InvalidEscape),
            ("{\"remark\":\"\\q\"}", 11, JsonErrorKind::InvalidEscape),
            ("{\"language\":256}", 12, JsonErrorKind::NumberOutOfRange),
            (
                "{\"extFields\":{\"a\":{}}}",
                18,
                JsonErrorKind::WrongType { field: "extFields" },
            ),
            (
                "{\"code\" 1}",
                8,
                JsonErrorKind::UnexpectedByte {
                    found: b'1',
                    expected: "':'",
                },
            ),
        ];
        for (text, offset, kind) in cases {
            assert_eq!(
                decode(text).unwrap_err(),
                DecodeError::Json {
                    offset: *offset,
                    kind: *kind
                },
                "{text:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_located() {
        let header = Bytes::from_static(b"{\"remark\":\"ok \xff\"}");
        assert_eq!(
            decode_header(&header, &Limits::default()).unwrap_err(),
            DecodeError::Json {
                offset: 10,
                kind: JsonErrorKind::InvalidUtf8
            }
        );
    }

    #[test]
    fn limits_hold() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            decode(&deep).unwrap_err(),
            DecodeError::Json {
                kind: JsonErrorKind::TooDeep,
                ..
            }
        ));
        let limits = Limits {
            max_ext_fields: 2,
            ..Limits::default()
        };
        let many = Bytes::from_static(br#"{"extFields":{"a":"1","b":"2","c":"3"}}"#);
        assert_eq!(
            decode_header(&many, &limits).unwrap_err(),
            DecodeError::TooManyExtFields { max: 2 }
        );
        let limits = Limits {
            max_string_len: 6,
            ..Limits::default()
        };
        let long = Bytes::from_static(br#"{"remark":"abcdefg"}"#);
        assert_eq!(
            decode_header(&long, &limits).unwrap_err(),
            DecodeError::StringTooLong { offset: 10, max: 6 }
        );
    }

    #[test]
    fn unescaped_strings_share_the_header_buffer() {
        let header =
            Bytes::from_static(br#"{"extFields":{"topic":"orders-of-the-day-for-the-eu-region"}}"#);
        let cmd = decode_header(&header, &Limits::default()).unwrap();
        let value = cmd.ext_fields.get("topic").unwrap();
        assert!(!value.is_inline());
        let range = header.as_ptr_range();
        assert!(range.contains(&value.as_bytes().as_ptr()));
    }

    #[test]
    fn int_len_matches_itoa() {
        for n in [0, 9, 10, -1, -10, 99, 100, i32::MAX, i32::MIN, 123_456] {
            assert_eq!(int_len(n), itoa::Buffer::new().format(n).len());
        }
    }
}
