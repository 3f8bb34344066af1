//! A decode loop for instruction counting: `valgrind --tool=callgrind` on
//! `decode_loop {json|rocketmq} {send|noext} N` decodes N copies of one frame from one read
//! buffer with `Codec::decode`, drops each command, and prints a checksum. Read the inclusive
//! count of `Codec::decode` (and of the command's drop) divided by N; see `benches/README.md`.

use std::hint::black_box;

use bytes::BytesMut;
use remora_core::{Codec, Command, Decoded, LanguageCode, SerializeType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty = match args.get(1).map(String::as_str) {
        Some("rocketmq") => SerializeType::RocketMq,
        _ => SerializeType::Json,
    };
    let send = args.get(2).map(String::as_str) != Some("noext");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);

    let mut cmd = Command::request(if send { 310 } else { 34 })
        .with_opaque(1_234_567)
        .with_serialize_type(ty);
    cmd.language = LanguageCode::JAVA;
    cmd.version = 453;
    if send {
        cmd = cmd.with_body(vec![7u8; 64]);
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
            cmd = cmd.with_ext(k, v);
        }
    }
    let codec = Codec::default();
    let mut frame = BytesMut::new();
    codec.encode_as(&cmd, ty, &mut frame).unwrap();
    let mut buf = BytesMut::with_capacity(frame.len() * (n + 1));
    for _ in 0..=n {
        buf.extend_from_slice(&frame);
    }
    let mut sum = 0u64;
    for _ in 0..=n {
        match codec.decode(black_box(&mut buf)) {
            Ok(Decoded::Command(cmd)) => {
                sum = sum.wrapping_add(cmd.opaque as u64);
                drop(black_box(cmd));
            }
            other => panic!("{other:?}"),
        }
    }
    println!("{sum}");
}
