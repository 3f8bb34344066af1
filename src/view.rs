//! The JSON view of a command that `remora decode` prints and `remora encode` reads.

use bytes::Bytes;
use remora_core::{Command, ExtFields, HeaderStr, LanguageCode, SerializeType};
use serde_json::{json, Map, Value};

/// The keys of the view, in the order they are printed.
pub const KEYS: [&str; 10] = [
    "serialize_type",
    "code",
    "language",
    "language_code",
    "version",
    "opaque",
    "flag",
    "remark",
    "ext_fields",
    "body_hex",
];

/// The view of `cmd`.
pub fn to_json(cmd: &Command) -> Value {
    let ext: Map<String, Value> = cmd
        .ext_fields()
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    json!({
        "serialize_type": cmd.serialize_type.name(),
        "code": cmd.code,
        "language": match cmd.language.name() {
            Some(name) => Value::from(name),
            None => Value::from(cmd.language.0),
        },
        "language_code": cmd.language.0,
        "version": cmd.version,
        "opaque": cmd.opaque,
        "flag": cmd.flag,
        "remark": cmd.remark(),
        "ext_fields": ext,
        "body_hex": hex(cmd.body()),
    })
}

/// The command a view describes. Every key is optional except `code`; missing ones take
/// [`Command::request`]'s values. Unknown keys are refused, so a typo does not pass silently.
pub fn from_json(view: &Value) -> Result<Command, String> {
    let obj = view.as_object().ok_or("expected a JSON object")?;
    if let Some(key) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key {key:?}"));
    }
    let int = |key: &str| -> Result<Option<i32>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("{key:?} must be an integer within i32")),
        }
    };
    let code = int("code")?.ok_or("missing \"code\"")?;
    let mut cmd = Command::request(code);
    if let Some(ty) = obj.get("serialize_type").and_then(Value::as_str) {
        cmd.serialize_type =
            SerializeType::from_name(ty).ok_or_else(|| format!("unknown serialize_type {ty:?}"))?;
    }
    let by_name = match obj.get("language") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(
            LanguageCode::from_name(name).ok_or_else(|| format!("unknown language {name:?}"))?,
        ),
        Some(v) => Some(language_number(v)?),
    };
    let by_code = match obj.get("language_code") {
        None | Some(Value::Null) => None,
        Some(v) => Some(language_number(v)?),
    };
    match (by_name, by_code) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("language {a:?} and language_code {} disagree", b.0))
        }
        (Some(l), _) | (None, Some(l)) => cmd.language = l,
        (None, None) => {}
    }
    cmd.version = int("version")?.unwrap_or(cmd.version);
    cmd.opaque = int("opaque")?.unwrap_or(cmd.opaque);
    cmd.flag = int("flag")?.unwrap_or(cmd.flag);
    cmd.set_remark(match obj.get("remark") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(HeaderStr::from(s.as_str())),
        Some(_) => return Err("\"remark\" must be a string or null".into()),
    });
    if let Some(ext) = obj.get("ext_fields").filter(|v| !v.is_null()) {
        let ext = ext.as_object().ok_or("\"ext_fields\" must be an object")?;
        let mut fields = ExtFields::with_capacity(ext.len());
        for (k, v) in ext {
            let v = v
                .as_str()
                .ok_or_else(|| format!("ext field {k:?} must be a string"))?;
            fields.insert(k.as_str(), v);
        }
        cmd.set_ext_fields(fields);
    }
    if let Some(body) = obj.get("body_hex").filter(|v| !v.is_null()) {
        let body = body.as_str().ok_or("\"body_hex\" must be a string")?;
        cmd.set_body(Bytes::from(
            unhex(body).map_err(|e| format!("body_hex: {e}"))?,
        ));
    }
    Ok(cmd)
}

fn language_number(v: &Value) -> Result<LanguageCode, String> {
    v.as_u64()
        .and_then(|n| u8::try_from(n).ok())
        .map(LanguageCode)
        .ok_or_else(|| "language code must be a number 0..=255".into())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Parses hex, ignoring ASCII whitespace and an optional `0x`.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let v = |d: u8| char::from(d).to_digit(16);
            match (v(pair[0]), v(pair[1])) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!(
                    "invalid hex digit in {:?}",
                    String::from_utf8_lossy(pair)
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_round_trips() {
        let mut cmd = Command::request(310)
            .with_opaque(-3)
            .with_remark("r")
            .with_ext("b", "2")
            .with_ext("a", "1")
            .with_body(&b"\x00\xff"[..]);
        cmd.language = LanguageCode(77);
        let view = to_json(&cmd);
        assert_eq!(view["language"], 77);
        assert_eq!(view["body_hex"], "00ff");
        let keys: Vec<_> = view["ext_fields"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["b", "a"], "ext field order is kept");
        assert_eq!(from_json(&view).unwrap(), cmd);
    }

    #[test]
    fn bad_views_are_refused() {
        assert!(from_json(&json!({})).unwrap_err().contains("code"));
        assert!(from_json(&json!({"code": 1, "cod": 2}))
            .unwrap_err()
            .contains("unknown key"));
        assert!(
            from_json(&json!({"code": 1, "language": "JAVA", "language_code": 3}))
                .unwrap_err()
                .contains("disagree")
        );
        assert!(from_json(&json!({"code": 1, "body_hex": "0g"})).is_err());
        assert!(from_json(&json!({"code": 4_000_000_000i64})).is_err());
    }

    #[test]
    fn unhex_accepts_spacing_and_prefix() {
        assert_eq!(unhex("0x00 0a\nFF").unwrap(), [0, 10, 255]);
        assert!(unhex("abc").is_err());
    }
}
