//! Time per decode on a shared machine: `decode_time WHAT [ROUNDS]` decodes a read buffer of
//! 500 copies of a frame (for `vectors`, 20 copies of each of the 44 frames, timed per 44),
//! ROUNDS times (default 300), and prints the minimum, first quartile and median time per
//! frame over the rounds. The minimum is what the
//! code costs when nothing else runs on its core; run two builds (or Remora and `ref-…`)
//! back to back and compare minimums. WHAT:
//!
//! - `json-send`: the bench's `SEND_MESSAGE_V2` request (13 extension fields; `i`, Java's
//!   message properties, holds 8 `\u00XX` escapes); `json-send-one`: the same with one escape
//!   left, `json-send-plain`: none;
//! - `json-hb`: the heartbeat; `json-body`: the heartbeat with a 4-byte body (split off as
//!   `Bytes` rather than skipped); `json-tiny`: that and 13 one-byte fields;
//! - `vectors`: the 44 frames of the shared vectors;
//! - `ref-…`: the same with `rocketmq-protocol` 1.0 (feature `reference`).
use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use remora_core::{Codec, Command, Decoded, LanguageCode, SerializeType};

/// The send request (or, `!send`, the heartbeat); `plain`: its properties without escapes
/// (`one`: all but the first).
fn send_request(send: bool, plain: bool, one: bool) -> Command {
    let mut cmd = Command::request(if send { 310 } else { 34 })
        .with_opaque(1_234_567)
        .with_serialize_type(SerializeType::Json);
    cmd.language = LanguageCode::JAVA;
    cmd.version = 453;
    if send {
        for (k, v) in [
            ("a", "please_rename_unique_group_name"),
            ("b", "TopicTest"),
            ("c", "TBW102"),
            ("d", "4"),
            ("e", "3"),
            ("f", "0"),
            ("g", "1714000000123"),
            ("h", "0"),
            ("i", "KEYS\u{1}OrderID188\u{2}UNIQ_KEY\u{1}7F0000017A2418B4AAC24D5F3C900000\u{2}WAIT\u{1}true\u{2}TAGS\u{1}TagA\u{2}"),
            ("j", "0"),
            ("k", "false"),
            ("m", "false"),
            ("n", "broker-a"),
        ] {
            if plain && one {
                let first = v.find('\u{1}').map_or(0, |i| i + 1);
                let rest = v[first..].replace('\u{1}', "1").replace('\u{2}', "2");
                cmd = cmd.with_ext(k, format!("{}{rest}", &v[..first]));
            } else if plain {
                cmd = cmd.with_ext(k, v.replace('\u{1}', "1").replace('\u{2}', "2"));
            } else {
                cmd = cmd.with_ext(k, v);
            }
        }
    }
    cmd
}

fn vector_frames() -> Vec<BytesMut> {
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
    frames
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).cloned().unwrap_or_else(|| "json-send".into());
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(300);
    let reference = what.starts_with("ref-");
    let shape = what.trim_start_matches("ref-");
    let codec = Codec::default();
    let frames: Vec<BytesMut> = if shape == "vectors" {
        vector_frames()
    } else if shape == "json-tiny" {
        let mut cmd = send_request(false, false, false).with_body(vec![1u8; 4]);
        for k in [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "m", "n",
        ] {
            cmd = cmd.with_ext(k, "0");
        }
        let mut f = BytesMut::new();
        codec.encode_as(&cmd, SerializeType::Json, &mut f).unwrap();
        vec![f]
    } else if shape == "json-body" {
        let cmd = send_request(false, false, false).with_body(vec![1u8; 4]);
        let mut f = BytesMut::new();
        codec.encode_as(&cmd, SerializeType::Json, &mut f).unwrap();
        vec![f]
    } else {
        let mut f = BytesMut::new();
        codec
            .encode_as(
                &send_request(
                    shape.starts_with("json-send"),
                    shape.ends_with("plain") || shape.ends_with("one"),
                    shape.ends_with("one"),
                ),
                SerializeType::Json,
                &mut f,
            )
            .unwrap();
        vec![f]
    };
    let batch = if shape == "vectors" { 20 } else { 500 };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let mut bufs: Vec<BytesMut> = frames
            .iter()
            .map(|f| {
                let mut b = BytesMut::with_capacity(f.len() * batch);
                for _ in 0..batch {
                    b.extend_from_slice(f);
                }
                b
            })
            .collect();
        let t = Instant::now();
        for _ in 0..batch {
            for buf in bufs.iter_mut() {
                if reference {
                    ref_decode(buf);
                } else {
                    match codec.decode(black_box(buf)) {
                        Ok(Decoded::Command(cmd)) => drop(black_box(cmd)),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
        times.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{what}: min {:.1} ns, p25 {:.1}, median {:.1}",
        times[0],
        times[times.len() / 4],
        times[times.len() / 2]
    );
}

#[cfg(feature = "reference")]
fn ref_decode(buf: &mut BytesMut) {
    let cmd = rocketmq_protocol::RemotingCommand::decode(buf)
        .expect("reference decodes")
        .expect("a whole frame");
    drop(black_box(cmd));
}

#[cfg(not(feature = "reference"))]
fn ref_decode(_: &mut BytesMut) {
    panic!("build with --features reference")
}
