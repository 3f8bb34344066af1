//! The shared test vectors: frames from an independent implementation must decode to exactly the
//! fields it states, re-encode faithfully, and invalid frames must be refused with the right error.
//!
//! The files are the project's copy in `tests/fixtures/vectors` (see its README for provenance).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use remora_core::{
    BinaryField, Codec, Command, DecodeError, Decoded, JsonErrorKind, SerializeType,
};
use remora_tests::{fixtures_dir, read_fixture, unhex};
use serde_json::Value;

fn decode_whole(codec: &Codec, frame: &[u8]) -> Result<Decoded, DecodeError> {
    let mut buf = BytesMut::from(frame);
    let out = codec.decode(&mut buf);
    if let Ok(Decoded::Command(_)) = out {
        assert!(buf.is_empty(), "a whole frame must be consumed exactly");
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `cmd` carries exactly the fields the vector states.
fn assert_fields(name: &str, cmd: &Command, v: &Value) {
    let ty = v["serialize_type"].as_str().unwrap();
    assert_eq!(cmd.serialize_type.name(), ty, "{name}: serialize type");
    assert_eq!(
        i64::from(cmd.code),
        v["code"].as_i64().unwrap(),
        "{name}: code"
    );
    assert_eq!(
        u64::from(cmd.language.0),
        v["language_code"].as_u64().unwrap(),
        "{name}: language code"
    );
    assert_eq!(
        cmd.language.name(),
        v["language"].as_str(),
        "{name}: language"
    );
    assert_eq!(
        i64::from(cmd.version),
        v["version"].as_i64().unwrap(),
        "{name}: version"
    );
    assert_eq!(
        i64::from(cmd.opaque),
        v["opaque"].as_i64().unwrap(),
        "{name}: opaque"
    );
    assert_eq!(
        i64::from(cmd.flag),
        v["flag"].as_i64().unwrap(),
        "{name}: flag"
    );
    assert_eq!(cmd.remark(), v["remark"].as_str(), "{name}: remark");
    let want: BTreeMap<&str, &str> = v["ext_fields"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    let got: BTreeMap<&str, &str> = cmd.ext_fields().iter().collect();
    assert_eq!(
        got.len(),
        cmd.ext_fields().len(),
        "{name}: duplicate ext keys"
    );
    assert_eq!(got, want, "{name}: ext fields");
    assert_eq!(
        hex(cmd.body()),
        v["body_hex"].as_str().unwrap(),
        "{name}: body"
    );
}

#[test]
fn every_valid_vector_decodes_to_its_fields_and_re_encodes() {
    let codec = Codec::default();
    let file = read_fixture("remoting-vectors.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 40, "vector file looks truncated");
    let mut rocketmq_byte_exact = 0;
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let frame = unhex(v["hex"].as_str().unwrap());
        let Decoded::Command(cmd) = decode_whole(&codec, &frame).unwrap() else {
            panic!("{name}: complete frame reported incomplete");
        };
        assert_fields(name, &cmd, v);

        let mut again = BytesMut::new();
        codec.encode(&cmd, &mut again).unwrap();
        match cmd.serialize_type {
            SerializeType::RocketMq => {
                let dropped: Vec<String> = dropped_empty_values(v);
                if dropped.is_empty() {
                    assert_eq!(hex(&again), hex(&frame), "{name}: ROCKETMQ re-encoding");
                    rocketmq_byte_exact += 1;
                } else {
                    // Java reads an empty ext value as null, so the decoder drops the entry and
                    // re-encoding cannot write it back: the frame shrinks by exactly those entries.
                    let entry_bytes: usize = dropped.iter().map(|k| 2 + k.len() + 4).sum();
                    assert_eq!(again.len() + entry_bytes, frame.len(), "{name}: size");
                }
            }
            SerializeType::Json => {}
        }
        let Decoded::Command(back) = decode_whole(&codec, &again).unwrap() else {
            panic!("{name}: re-encoded frame incomplete");
        };
        assert_fields(name, &back, v);
    }
    assert!(
        rocketmq_byte_exact >= 20,
        "only {rocketmq_byte_exact} byte-exact ROCKETMQ vectors"
    );
}

/// Ext keys that the vector's note says the decoder drops.
fn dropped_empty_values(v: &Value) -> Vec<String> {
    let Some(note) = v.get("note").and_then(Value::as_str) else {
        return vec![];
    };
    let Some(list) = note.split("drops them (Java-compatible): ").nth(1) else {
        return vec![];
    };
    serde_json::from_str(list).expect("dropped-key list in note")
}

#[test]
fn vectors_decode_the_same_when_fed_a_byte_at_a_time() {
    let codec = Codec::default();
    let file = read_fixture("remoting-vectors.json");
    for v in file["vectors"].as_array().unwrap() {
        let frame = unhex(v["hex"].as_str().unwrap());
        if frame.len() > 4096 {
            continue;
        }
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, &b) in frame.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            match codec.decode(&mut buf).unwrap() {
                Decoded::Incomplete { needed } => {
                    assert!(i + 1 < frame.len());
                    assert!(needed < frame.len() - i, "overstated need");
                }
                Decoded::Command(cmd) => got = Some(cmd),
            }
        }
        assert_fields(v["name"].as_str().unwrap(), &got.unwrap(), v);
    }
}

fn expected_error(name: &str) -> Result<Decoded, DecodeError> {
    use DecodeError::*;
    let json = |offset, kind| Err(Json { offset, kind });
    let binary = |field, offset| Err(BinaryOverrun { field, offset });
    match name {
        "total-length-below-minimum" => Err(FrameTooShort { length: 2 }),
        "negative-total-length" => Err(NegativeLength { length: -1 }),
        "total-length-over-16MiB" => Err(FrameTooLarge {
            frame_len: 0x0100_0001 + 4,
            max: 16 << 20,
        }),
        "header-length-larger-than-frame-json" => Err(HeaderOverrunsFrame {
            header_len: 127,
            available: 20,
        }),
        "header-length-larger-than-frame-rocketmq" => Err(HeaderOverrunsFrame {
            header_len: 22,
            available: 21,
        }),
        "serialize-type-7" => Err(UnknownSerializeType { ty: 7 }),
        "json-truncated-object" => json(54, JsonErrorKind::UnexpectedEnd),
        "json-not-an-object" => json(
            0,
            JsonErrorKind::UnexpectedByte {
                found: b'h',
                expected: "'{'",
            },
        ),
        "json-code-not-a-number" => json(8, JsonErrorKind::WrongType { field: "code" }),
        "json-empty-header" => json(0, JsonErrorKind::UnexpectedEnd),
        "rocketmq-header-truncated" => binary(BinaryField::Fixed, 0),
        "rocketmq-remark-length-overruns" => binary(BinaryField::Remark, 17),
        "rocketmq-ext-length-overruns" => binary(BinaryField::Ext, 21),
        "rocketmq-ext-key-overruns" => binary(BinaryField::ExtKey, 23),
        "rocketmq-missing-ext-length" => binary(BinaryField::ExtLength, 17),
        "truncated-frame-last-byte-missing" => Ok(Decoded::Incomplete { needed: 1 }),
        other => panic!("invalid-frames.json has a frame this test does not know: {other}"),
    }
}

#[test]
fn every_invalid_frame_is_refused_with_its_reason() {
    let codec = Codec::default();
    let file = read_fixture("invalid-frames.json");
    let frames = file["frames"].as_array().unwrap();
    assert!(frames.len() >= 16);
    for f in frames {
        let name = f["name"].as_str().unwrap();
        let bytes = unhex(f["hex"].as_str().unwrap());
        let want = expected_error(name);
        assert_eq!(decode_whole(&codec, &bytes), want, "{name}");
        match f["reference_result"].as_str().unwrap() {
            "incomplete" => assert!(want.is_ok(), "{name}: must stay incomplete"),
            "error" => assert!(want.is_err(), "{name}: must be an error"),
            other => panic!("{name}: unknown reference_result {other}"),
        }
        // Fed in pieces, the stream reaches the same verdict and never produces a command.
        let mut buf = BytesMut::new();
        let mut last = Ok(Decoded::Incomplete { needed: 1 });
        for chunk in bytes.chunks(3) {
            buf.extend_from_slice(chunk);
            last = codec.decode(&mut buf);
            assert!(
                !matches!(last, Ok(Decoded::Command(_))),
                "{name}: produced a command"
            );
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, want, "{name}: chunked");
        // And the one-shot decoder refuses every one of them too.
        assert!(
            codec.decode_frame(&Bytes::from(bytes)).is_err(),
            "{name}: decode_frame"
        );
    }
}

#[test]
fn fixtures_match_the_shared_vectors_when_present() {
    let shared = fixtures_dir().join("../../../../shared/vectors");
    if !shared.exists() {
        eprintln!("../shared/vectors not present; the fixture copy is used alone");
        return;
    }
    for name in ["remoting-vectors.json", "invalid-frames.json"] {
        let ours = std::fs::read(fixtures_dir().join(name)).unwrap();
        let theirs = std::fs::read(shared.join(name)).unwrap();
        assert!(
            ours == theirs,
            "tests/fixtures/vectors/{name} differs from ../shared: re-copy it"
        );
    }
}
