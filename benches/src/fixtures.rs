//! The frames and commands the benches measure.

use bytes::{Bytes, BytesMut};
use remora_core::{Command, LanguageCode, SerializeType};

/// `SEND_MESSAGE_V2`.
pub const SEND_MESSAGE_V2: i32 = 310;
/// `HEART_BEAT`.
pub const HEART_BEAT: i32 = 34;
/// `V4_9_4`'s release ordinal, what a 4.9.4 Java client sends.
pub const VERSION: i32 = 453;
/// The opaque every benchmarked request carries.
pub const OPAQUE: i32 = 1_234_567;

/// The extension fields a Java producer's `SendMessageRequestHeaderV2` puts on the wire (`l`,
/// `maxReconsumeTimes`, is null for a normal send and so absent), in the order both codecs
/// write. `i`, the message's properties, holds Java's `\u{1}`/`\u{2}` separators (escaped in
/// JSON).
pub const SEND_EXT: [(&str, &str); 13] = [
    ("a", "please_rename_unique_group_name"),
    ("b", "TopicTest"),
    ("c", "TBW102"),
    ("d", "4"),
    ("e", "3"),
    ("f", "0"),
    ("g", "1714000000123"),
    ("h", "0"),
    (
        "i",
        "KEYS\u{1}OrderID188\u{2}UNIQ_KEY\u{1}7F0000017A2418B4AAC24D5F3C900000\u{2}\
         WAIT\u{1}true\u{2}TAGS\u{1}TagA\u{2}",
    ),
    ("j", "0"),
    ("k", "false"),
    ("m", "false"),
    ("n", "broker-a"),
];

/// A body of `len` bytes (`i % 251`, so that no two nearby bytes repeat a pattern).
pub fn body(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A request as a Java client sends it: `code` with language `JAVA`, [`VERSION`], [`OPAQUE`],
/// the `ext` fields in order and `body`, its header in `ty`.
pub fn java_request(code: i32, ty: SerializeType, ext: &[(&str, &str)], body: Bytes) -> Command {
    let mut cmd = Command::request(code)
        .with_opaque(OPAQUE)
        .with_body(body)
        .with_serialize_type(ty);
    cmd.language = LanguageCode::JAVA;
    cmd.version = VERSION;
    for (k, v) in ext {
        cmd = cmd.with_ext(*k, *v);
    }
    cmd
}

/// The producer's `SEND_MESSAGE_V2` request ([`SEND_EXT`]) with a body of `body_len` bytes.
pub fn send_request(ty: SerializeType, body_len: usize) -> Command {
    java_request(SEND_MESSAGE_V2, ty, &SEND_EXT, body(body_len))
}

/// The minimal heartbeat: no fields, no body.
pub fn heartbeat(ty: SerializeType) -> Command {
    java_request(HEART_BEAT, ty, &[], Bytes::new())
}

/// The 44 frames of the shared test vectors (`tests/fixtures/vectors/remoting-vectors.json`):
/// varied shapes (remarks, escapes, unicode, 0 to 50 extension fields, bodies up to 64 KiB),
/// both header types, each in a `BytesMut` of its own.
pub fn vector_frames() -> Vec<BytesMut> {
    let text = include_str!("../../tests/fixtures/vectors/remoting-vectors.json");
    let mut frames = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"hex\": \"") {
        rest = &rest[at + 8..];
        let end = rest.find('"').expect("a closing quote");
        let hex = &rest[..end];
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        frames.push(BytesMut::from(&bytes[..]));
        rest = &rest[end..];
    }
    assert_eq!(frames.len(), 44, "the vector file holds 44 frames");
    frames
}

/// Reads every field of `cmd` once (what a program that uses the whole command pays).
pub fn read_all(cmd: &Command) -> usize {
    let mut n = (cmd.code ^ cmd.version ^ cmd.opaque ^ cmd.flag) as usize;
    n += usize::from(cmd.language.0) + usize::from(cmd.serialize_type.code());
    n += cmd.remark().map_or(0, str::len);
    for (k, v) in cmd.ext_fields() {
        n += k.len() + v.len();
    }
    n + cmd.body().len()
}

/// The same operations on `rocketmq-protocol` 1.0.0, the Rust reference implementation.
#[cfg(feature = "reference")]
pub mod reference {
    use std::collections::HashMap;

    use bytes::{BufMut, Bytes, BytesMut};
    use cheetah_string::CheetahString;
    use remora_core::SerializeType;
    use rocketmq_protocol::protocol::{LanguageCode, SerializeType as RefType};
    use rocketmq_protocol::RemotingCommand;

    use super::{OPAQUE, VERSION};

    /// The reference's name for `ty`.
    pub fn ref_type(ty: SerializeType) -> RefType {
        match ty {
            SerializeType::Json => RefType::JSON,
            SerializeType::RocketMq => RefType::ROCKETMQ,
        }
    }

    /// [`super::java_request`] as a user of the reference builds it: extension fields as its
    /// string map (what Remora's `ExtFields` is), the body only when there is one.
    pub fn java_request(
        code: i32,
        ty: SerializeType,
        ext: &[(&str, &str)],
        body: &Bytes,
    ) -> RemotingCommand {
        let mut cmd = RemotingCommand::create_remoting_command(code)
            .set_language(LanguageCode::JAVA)
            .set_version(VERSION)
            .set_opaque(OPAQUE)
            .set_serialize_type(ref_type(ty));
        if !ext.is_empty() {
            let ext: HashMap<CheetahString, CheetahString> = ext
                .iter()
                .map(|(k, v)| (CheetahString::from_slice(k), CheetahString::from_slice(v)))
                .collect();
            cmd = cmd.set_ext_fields(ext);
        }
        if !body.is_empty() {
            cmd = cmd.set_body(body.clone());
        }
        cmd
    }

    /// The reference's fastest complete-frame encode into a caller's buffer: its
    /// `try_fast_header_encode` (length prefix, marker and header, the frame length counting
    /// the body) followed by the body, as its `EncodedFrame::copy_to` lays it out.
    pub fn encode(cmd: &mut RemotingCommand, buf: &mut BytesMut) {
        buf.clear();
        cmd.try_fast_header_encode(buf).expect("reference encodes");
        if let Some(body) = cmd.body() {
            buf.put_slice(body);
        }
    }

    /// The first frame of `buf`, which must be whole.
    pub fn decode(buf: &mut BytesMut) -> RemotingCommand {
        RemotingCommand::decode(buf)
            .expect("reference decodes")
            .expect("reference frame is complete")
    }

    /// Reads every field of a reference command once (its extension map is built on first
    /// access), as [`super::read_all`] does of Remora's.
    pub fn read_all(cmd: &RemotingCommand) -> usize {
        let mut n = (cmd.code() ^ cmd.version() ^ cmd.opaque() ^ cmd.flag()) as usize;
        n += usize::from(cmd.language().get_code());
        n += cmd.remark().map_or(0, |r| r.len());
        if let Some(ext) = cmd.ext_fields() {
            for (k, v) in ext.iter() {
                n += k.len() + v.len();
            }
        }
        n + cmd.body().map_or(0, |b| b.len())
    }
}
