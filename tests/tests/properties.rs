//! Properties of the codec: encode→decode is the identity, and how the input is chunked never
//! changes what the stream decoder produces.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use remora_core::{
    Codec, Command, DecodeError, Decoded, ExtFields, LanguageCode, Limits, SerializeType,
};

/// Any string, biased towards the characters that need escaping or are multi-byte.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        "[\\x00-\\x1f\"\\\\/\\x7f]{0,6}",
        "[a-z0-9\u{e9}\u{4e3b}\u{1f680}\u{2028}]{0,10}",
    ]
}

fn command(ty: SerializeType) -> impl Strategy<Value = Command> {
    let rocketmq = ty == SerializeType::RocketMq;
    // ROCKETMQ carries 16-bit code and version, no empty remark, and drops empty ext values.
    let code = if rocketmq {
        any::<i16>().prop_map(i32::from).boxed()
    } else {
        any::<i32>().boxed()
    };
    let version = if rocketmq {
        any::<i16>().prop_map(i32::from).boxed()
    } else {
        any::<i32>().boxed()
    };
    let remark =
        proptest::option::of(text()).prop_map(move |r| r.filter(|r| !rocketmq || !r.is_empty()));
    let ext = vec((text(), text()), 0..12).prop_map(move |pairs| {
        pairs
            .into_iter()
            .filter(|(_, v)| !rocketmq || !v.is_empty())
            .collect::<ExtFields>()
    });
    (
        code,
        any::<u8>(),
        version,
        any::<i32>(),
        any::<i32>(),
        remark,
        ext,
        vec(any::<u8>(), 0..300),
    )
        .prop_map(
            move |(code, lang, version, opaque, flag, remark, ext_fields, body)| {
                let mut cmd = Command::request(code)
                    .with_opaque(opaque)
                    .with_serialize_type(ty)
                    .with_body(Bytes::from(body));
                cmd.language = LanguageCode(lang);
                cmd.version = version;
                cmd.flag = flag;
                cmd.set_remark(remark.map(Into::into));
                cmd.set_ext_fields(ext_fields);
                cmd
            },
        )
}

fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        command(SerializeType::Json),
        command(SerializeType::RocketMq)
    ]
}

/// Everything a stream decoder produces for `input`, fed in pieces ending at `cuts`.
fn decode_stream(
    codec: &Codec,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<Command>, Result<usize, DecodeError>) {
    let mut buf = BytesMut::new();
    let mut out = vec![];
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    ends.push(input.len());
    ends.sort_unstable();
    for end in ends {
        buf.extend_from_slice(&input[at..end.max(at)]);
        at = end.max(at);
        loop {
            match codec.decode(&mut buf) {
                Ok(Decoded::Command(cmd)) => out.push(cmd),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(buf.len()))
}

/// `cmd`'s header as rocketmq-rust writes it: struct order, explicit nulls.
fn rust_order_header(cmd: &Command) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let language = match cmd.language.name() {
        Some(name) => q(name),
        None => cmd.language.0.to_string(),
    };
    let remark = cmd.remark().map_or("null".to_string(), q);
    let mut fields = cmd.ext_fields().iter().peekable();
    let ext = if fields.peek().is_none() {
        "null".to_string()
    } else {
        let entries: Vec<String> = fields.map(|(k, v)| format!("{}:{}", q(k), q(v))).collect();
        format!("{{{}}}", entries.join(","))
    };
    format!(
        r#"{{"code":{},"language":{language},"version":{},"opaque":{},"flag":{},"remark":{remark},"extFields":{ext},"serializeTypeCurrentRPC":"JSON"}}"#,
        cmd.code, cmd.version, cmd.opaque, cmd.flag
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Both canonical key orders (each taken by the key-order parser when it can) decode to the
    /// command, and so does the same text with whitespace (which only the general parser takes).
    #[test]
    fn both_key_orders_and_the_general_parser_agree(
        cmd in command(SerializeType::Json),
        named in any::<bool>(),
    ) {
        let codec = Codec::default();
        let mut cmd = cmd;
        if named {
            // A language with a name, so the key-order parser takes the header.
            cmd.language = LanguageCode(cmd.language.0 % 14);
        }
        let mut java = BytesMut::new();
        codec.encode_as(&cmd, SerializeType::Json, &mut java).unwrap();
        let from_java = codec.decode_frame(&java.freeze()).unwrap();
        prop_assert_eq!(&from_java, &cmd);
        let mut header_only = cmd.clone();
        header_only.set_body(Bytes::new());
        let rust = rust_order_header(&cmd);
        let spaced = rust.replacen(',', " , ", 1);
        for text in [rust, spaced] {
            let got = remora_core::json::decode_header(&Bytes::from(text.clone()), &Limits::default())
                .unwrap();
            prop_assert_eq!(&got, &header_only, "{}", text);
        }
    }

    #[test]
    fn encode_then_decode_is_identity(cmd in any_command()) {
        let codec = Codec::default();
        let mut wire = BytesMut::new();
        codec.encode(&cmd, &mut wire).unwrap();
        prop_assert_eq!(wire.len(), codec.encoded_len(&cmd, cmd.serialize_type).unwrap());
        let Decoded::Command(back) = codec.decode(&mut wire).unwrap() else {
            panic!("whole frame reported incomplete");
        };
        prop_assert!(wire.is_empty());
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn encode_as_either_type_keeps_the_json_safe_fields(cmd in command(SerializeType::RocketMq)) {
        let codec = Codec::default();
        for ty in [SerializeType::Json, SerializeType::RocketMq] {
            let mut wire = BytesMut::new();
            codec.encode_as(&cmd, ty, &mut wire).unwrap();
            let back = codec.decode_frame(&wire.freeze()).unwrap();
            prop_assert_eq!(back.serialize_type, ty);
            prop_assert_eq!(back.ext_fields(), cmd.ext_fields());
            prop_assert_eq!(back.remark(), cmd.remark());
            prop_assert_eq!((back.code, back.opaque, back.flag, back.language), (cmd.code, cmd.opaque, cmd.flag, cmd.language));
        }
    }

    #[test]
    fn chunking_never_changes_the_result_for_valid_streams(
        cmds in vec(any_command(), 1..5),
        cut_tail in 0usize..64,
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let codec = Codec::default();
        let mut wire = BytesMut::new();
        for cmd in &cmds {
            codec.encode(cmd, &mut wire).unwrap();
        }
        let input = &wire[..wire.len() - cut_tail.min(wire.len())];
        let whole = decode_stream(&codec, input, &[]);
        let split = decode_stream(&codec, input, &cuts);
        prop_assert_eq!(&split, &whole);
        if cut_tail == 0 {
            prop_assert_eq!(whole, (cmds, Ok(0)));
        }
    }

    #[test]
    fn chunking_never_changes_the_result_for_any_bytes(
        input in vec(any::<u8>(), 0..400),
        prefix in vec(any_command(), 0..2),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        // Small limits so random length prefixes are often refused rather than awaited.
        let codec = Codec::new(Limits { max_frame_len: 512, ..Limits::default() });
        let mut wire = BytesMut::new();
        for cmd in &prefix {
            if codec.encode(cmd, &mut wire).is_err() {
                wire.clear();
            }
        }
        wire.extend_from_slice(&input);
        let whole = decode_stream(&codec, &wire, &[]);
        let split = decode_stream(&codec, &wire, &cuts);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn mutated_frames_never_panic_and_re_encode_consistently(
        cmd in any_command(),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let codec = Codec::default();
        let mut wire = BytesMut::new();
        codec.encode(&cmd, &mut wire).unwrap();
        let len = wire.len();
        for (at, byte) in flips {
            wire[at % len] = byte;
        }
        if let Ok(back) = codec.decode_frame(&wire.clone().freeze()) {
            let mut again = BytesMut::new();
            if codec.encode(&back, &mut again).is_ok() {
                let third = codec.decode_frame(&again.freeze()).unwrap();
                prop_assert_eq!(third, back);
            }
        }
    }
}

/// A whole JSON frame around `header` and `body`.
fn json_frame(header: &[u8], body: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.extend_from_slice(&((4 + header.len() + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&(header.len() as u32).to_be_bytes());
    f.extend_from_slice(header);
    f.extend_from_slice(body);
    f
}

/// `Codec::decode` (which rewrites a JSON header in the read buffer: escapes undone, the
/// extension fields compacted) against `Codec::decode_frame` (which reads a copy).
fn decode_in_place_and_copied(
    codec: &Codec,
    wire: &BytesMut,
) -> Result<(Result<Decoded, DecodeError>, BytesMut), TestCaseError> {
    let mut buf = wire.clone();
    let in_place = codec.decode(&mut buf);
    match &in_place {
        Ok(Decoded::Command(cmd)) => {
            prop_assert!(buf.is_empty());
            let copied = codec.decode_frame(&wire.clone().freeze()).unwrap();
            prop_assert_eq!(cmd, &copied);
            prop_assert_eq!(cmd.ext_fields().iter().count(), copied.ext_fields().len());
            for (k, v) in copied.ext_fields() {
                prop_assert!(cmd.ext_fields().iter().any(|e| e == (k, v)));
            }
        }
        Ok(Decoded::Incomplete { .. }) => {}
        Err(e) => {
            prop_assert_eq!(&buf, wire, "an error leaves the read buffer as it was");
            prop_assert_eq!(&codec.decode_frame(&wire.clone().freeze()).unwrap_err(), e);
        }
    }
    Ok((in_place, buf))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Both key orders decoded in place read back every field, and a mutated frame gets the
    /// same answer in place as from a copy; an error leaves the read buffer as it was.
    #[test]
    fn decoding_in_place_agrees_with_decoding_a_copy(
        cmd in command(SerializeType::Json),
        rust_order in any::<bool>(),
        flips in vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let codec = Codec::default();
        let mut cmd = cmd;
        cmd.language = LanguageCode(cmd.language.0 % 14);
        let mut wire = if rust_order {
            json_frame(rust_order_header(&cmd).as_bytes(), cmd.body())
        } else {
            let mut w = BytesMut::new();
            codec.encode_as(&cmd, SerializeType::Json, &mut w).unwrap();
            w
        };
        if flips.is_empty() {
            let (out, _) = decode_in_place_and_copied(&codec, &wire)?;
            prop_assert_eq!(out, Ok(Decoded::Command(cmd)));
        } else {
            // Flip header bytes only (past the 8-byte prefix), so the frame stays whole.
            let header_len = wire.len() - cmd.body().len() - 8;
            for (at, byte) in flips {
                wire[8 + at % header_len.max(1)] = byte;
            }
            let (_verdict, _left) = decode_in_place_and_copied(&codec, &wire)?;
        }
    }
}
