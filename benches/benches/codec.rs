//! Criterion benchmarks of the Remora codec: decode and encode of one frame, JSON and ROCKETMQ
//! headers, for a producer's `SEND_MESSAGE_V2` request (bodies of 0 B, 128 B and 4 KiB) and a
//! minimal heartbeat. With the `reference` feature the same operations run on `rocketmq-protocol`
//! 1.0.0 (the Rust reference implementation) in the same process, so the ratios are comparable.
//!
//! Benchmark ids are `{decode,encode}/{json,rocketmq}/{0,128,4096,heartbeat}/{remora,reference,
//! floor}`; `floor` is the buffer work any implementation must do. See `benches/README.md` for
//! what each one measures and `benches/compare.py` for the ratios.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use remora_core::{Codec, Command, Decoded, LanguageCode, SerializeType};

/// `SEND_MESSAGE_V2`.
const SEND_MESSAGE_V2: i32 = 310;
/// `HEART_BEAT`.
const HEART_BEAT: i32 = 34;
/// `V4_9_4`'s release ordinal, what a 4.9.4 Java client sends.
const VERSION: i32 = 453;
const OPAQUE: i32 = 1_234_567;

/// The extension fields a Java producer's `SendMessageRequestHeaderV2` puts on the wire (`l`,
/// `maxReconsumeTimes`, is null for a normal send and so absent), in the order both codecs write.
const SEND_EXT: [(&str, &str); 13] = [
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

/// One request shape; `name` is the last-but-one part of the benchmark id.
struct Case {
    name: String,
    code: i32,
    ext: &'static [(&'static str, &'static str)],
    body: Bytes,
}

fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = [0usize, 128, 4096]
        .into_iter()
        .map(|len| Case {
            name: len.to_string(),
            code: SEND_MESSAGE_V2,
            ext: &SEND_EXT,
            body: (0..len)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
        })
        .collect();
    cases.push(Case {
        name: "heartbeat".into(),
        code: HEART_BEAT,
        ext: &[],
        body: Bytes::new(),
    });
    cases
}

const TYPES: [(SerializeType, &str); 2] = [
    (SerializeType::Json, "json"),
    (SerializeType::RocketMq, "rocketmq"),
];

fn remora_command(case: &Case, ty: SerializeType) -> Command {
    let mut cmd = Command::request(case.code)
        .with_opaque(OPAQUE)
        .with_body(case.body.clone())
        .with_serialize_type(ty);
    cmd.language = LanguageCode::JAVA;
    cmd.version = VERSION;
    for (k, v) in case.ext {
        cmd = cmd.with_ext(*k, *v);
    }
    cmd
}

/// What `encode/*/remora` does once: the whole frame into a reused buffer.
fn remora_encode(codec: &Codec, cmd: &Command, ty: SerializeType, buf: &mut BytesMut) {
    buf.clear();
    codec.encode_as(cmd, ty, buf).expect("remora encodes");
}

/// What `decode/*/remora` does once: the first frame of `buf` to a command.
fn remora_decode(codec: &Codec, buf: &mut BytesMut) -> Command {
    match codec.decode(buf) {
        Ok(Decoded::Command(cmd)) => cmd,
        other => panic!("remora did not decode the frame: {other:?}"),
    }
}

fn bench_codec(c: &mut Criterion) {
    let codec = Codec::default();
    for case in cases() {
        for (ty, ty_name) in TYPES {
            let cmd = remora_command(&case, ty);
            let mut remora_frame = BytesMut::new();
            remora_encode(&codec, &cmd, ty, &mut remora_frame);
            assert_eq!(remora_frame.len(), codec.encoded_len(&cmd, ty).unwrap());
            assert_eq!(remora_decode(&codec, &mut remora_frame.clone()), cmd);

            #[cfg(feature = "reference")]
            let reference_frame =
                reference::check_equivalence(&codec, &case, ty, &cmd, &remora_frame);

            let mut group = c.benchmark_group(format!("decode/{ty_name}/{}", case.name));
            group.throughput(Throughput::Elements(1));
            group.bench_function("remora", |b| {
                b.iter_batched_ref(
                    || remora_frame.clone(),
                    |buf| drop(black_box(remora_decode(&codec, black_box(buf)))),
                    BatchSize::SmallInput,
                )
            });
            // What any decoder that hands out frames of a `BytesMut` pays: taking the frame off
            // as `Bytes`, and dropping it. `reference / floor` bounds every possible speed-up.
            group.bench_function("floor", |b| {
                let len = remora_frame.len();
                b.iter_batched_ref(
                    || remora_frame.clone(),
                    |buf| drop(black_box(buf.split_to(len).freeze())),
                    BatchSize::SmallInput,
                )
            });
            #[cfg(feature = "reference")]
            reference::bench_decode(&mut group, &reference_frame);
            group.finish();

            let mut group = c.benchmark_group(format!("encode/{ty_name}/{}", case.name));
            group.throughput(Throughput::Elements(1));
            group.bench_function("remora", |b| {
                let mut buf = BytesMut::with_capacity(remora_frame.len() * 2);
                b.iter(|| {
                    remora_encode(&codec, black_box(&cmd), ty, &mut buf);
                    black_box(&buf);
                })
            });
            // What any encoder into a reused buffer pays: copying the finished frame.
            group.bench_function("floor", |b| {
                let mut buf = BytesMut::with_capacity(remora_frame.len() * 2);
                b.iter(|| {
                    buf.clear();
                    buf.extend_from_slice(black_box(&remora_frame));
                    black_box(&buf);
                })
            });
            #[cfg(feature = "reference")]
            reference::bench_encode(&mut group, &case, ty, reference_frame.len());
            group.finish();
        }
    }
}

/// The 44 frames of the shared test vectors (`tests/fixtures/vectors/remoting-vectors.json`):
/// varied shapes (remarks, escapes, unicode, 0 to 50 extension fields, bodies up to 64 KiB),
/// none of them the frames above.
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
    assert_eq!(frames.len(), 44, "the vector file holds 44 frames");
    frames
}

/// Reads every field of `cmd` once (what a program that uses the whole command pays).
fn remora_read_all(cmd: &Command) -> usize {
    let mut n = (cmd.code ^ cmd.version ^ cmd.opaque ^ cmd.flag) as usize;
    n += usize::from(cmd.language.0) + usize::from(cmd.serialize_type.code());
    n += cmd.remark().map_or(0, str::len);
    for (k, v) in cmd.ext_fields() {
        n += k.len() + v.len();
    }
    n + cmd.body().len()
}

/// Decoding the 44 vector frames, and decoding them and reading every field; one iteration
/// handles all 44 (`Throughput::Elements(44)`).
fn bench_vectors(c: &mut Criterion) {
    let codec = Codec::default();
    let frames = vector_frames();
    let total: usize = frames.iter().map(BytesMut::len).sum();
    for (name, read) in [
        ("decode/vectors/44", false),
        ("decode_read/vectors/44", true),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(frames.len() as u64));
        group.bench_function("remora", |b| {
            b.iter_batched_ref(
                || frames.clone(),
                |bufs| {
                    let mut n = 0;
                    for buf in bufs.iter_mut() {
                        let cmd = remora_decode(&codec, black_box(buf));
                        if read {
                            n += remora_read_all(&cmd);
                        }
                        drop(black_box(cmd));
                    }
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });
        if !read {
            group.bench_function("floor", |b| {
                b.iter_batched_ref(
                    || frames.clone(),
                    |bufs| {
                        for buf in bufs.iter_mut() {
                            let len = buf.len();
                            drop(black_box(buf.split_to(len).freeze()));
                        }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        #[cfg(feature = "reference")]
        reference::bench_vectors(&mut group, &frames, read);
        group.finish();
    }
    black_box(total);
}

/// The same operations on `rocketmq-protocol` 1.0.0, and the check that both sides agree.
#[cfg(feature = "reference")]
mod reference {
    use std::collections::HashMap;
    use std::hint::black_box;

    use bytes::{BufMut, BytesMut};
    use cheetah_string::CheetahString;
    use criterion::measurement::WallTime;
    use criterion::{BatchSize, BenchmarkGroup};
    use remora_core::{Codec, Command, SerializeType};
    use rocketmq_protocol::protocol::{LanguageCode, SerializeType as RefType};
    use rocketmq_protocol::RemotingCommand;

    use super::{remora_decode, Case, OPAQUE, VERSION};

    fn ref_type(ty: SerializeType) -> RefType {
        match ty {
            SerializeType::Json => RefType::JSON,
            SerializeType::RocketMq => RefType::ROCKETMQ,
        }
    }

    /// The request as a user of the reference builds it: extension fields as its string map
    /// (what Remora's `ExtFields` is), the body only when there is one.
    fn command(case: &Case, ty: SerializeType) -> RemotingCommand {
        let mut cmd = RemotingCommand::create_remoting_command(case.code)
            .set_language(LanguageCode::JAVA)
            .set_version(VERSION)
            .set_opaque(OPAQUE)
            .set_serialize_type(ref_type(ty));
        if !case.ext.is_empty() {
            let ext: HashMap<CheetahString, CheetahString> = case
                .ext
                .iter()
                .map(|(k, v)| (CheetahString::from_slice(k), CheetahString::from_slice(v)))
                .collect();
            cmd = cmd.set_ext_fields(ext);
        }
        if !case.body.is_empty() {
            cmd = cmd.set_body(case.body.clone());
        }
        cmd
    }

    /// The reference's fastest complete-frame encode into a caller's buffer: its
    /// `try_fast_header_encode` (length prefix, marker and header, the frame length counting the
    /// body) followed by the body, as its `EncodedFrame::copy_to` lays it out.
    fn encode(cmd: &mut RemotingCommand, buf: &mut BytesMut) {
        buf.clear();
        cmd.try_fast_header_encode(buf).expect("reference encodes");
        if let Some(body) = cmd.body() {
            buf.put_slice(body);
        }
    }

    fn decode(buf: &mut BytesMut) -> RemotingCommand {
        RemotingCommand::decode(buf)
            .expect("reference decodes")
            .expect("reference frame is complete")
    }

    /// Asserts, outside the timed loops, that each side decodes the other's frame to the same
    /// command; returns the reference's own frame (what `decode/*/reference` decodes).
    pub(super) fn check_equivalence(
        codec: &Codec,
        case: &Case,
        ty: SerializeType,
        cmd: &Command,
        remora_frame: &BytesMut,
    ) -> BytesMut {
        let mut reference_frame = BytesMut::new();
        let mut ref_cmd = command(case, ty);
        encode(&mut ref_cmd, &mut reference_frame);
        let mut again = BytesMut::new();
        encode(&mut ref_cmd, &mut again);
        assert_eq!(again, reference_frame, "reference encoding is repeatable");
        if ty == SerializeType::RocketMq {
            // Same field order (the reference sorts keys; `a`..`n` already are): same bytes.
            assert_eq!(
                &reference_frame[..],
                &remora_frame[..],
                "ROCKETMQ frames differ"
            );
        }

        // Remora reads the reference's frame as the command it encoded itself.
        let from_reference = remora_decode(codec, &mut reference_frame.clone());
        assert_eq!(
            &from_reference, cmd,
            "remora decoding the reference's {ty:?} frame"
        );

        // The reference reads both frames as the command Remora encoded.
        for (frame, who) in [(remora_frame, "remora"), (&reference_frame, "reference")] {
            let got = decode(&mut frame.clone());
            let what = format!("reference decoding {who}'s {ty:?} frame");
            assert_eq!(got.code(), cmd.code, "{what}");
            assert_eq!(got.language().get_code(), cmd.language.0, "{what}");
            assert_eq!(got.version(), cmd.version, "{what}");
            assert_eq!(got.opaque(), cmd.opaque, "{what}");
            assert_eq!(got.flag(), cmd.flag, "{what}");
            assert!(got.remark().is_none(), "{what}");
            let ext: HashMap<&str, &str> = got
                .ext_fields()
                .map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
                .unwrap_or_default();
            let want: HashMap<&str, &str> = cmd.ext_fields().iter().collect();
            assert_eq!(ext, want, "{what}");
            assert_eq!(got.body().map_or(&[][..], |b| &b[..]), cmd.body(), "{what}");
        }
        reference_frame
    }

    /// Reads every field of a reference command once (its extension map is built on first
    /// access).
    fn read_all(cmd: &RemotingCommand) -> usize {
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

    pub(super) fn bench_vectors(
        group: &mut BenchmarkGroup<'_, WallTime>,
        frames: &[BytesMut],
        read: bool,
    ) {
        group.bench_function("reference", |b| {
            b.iter_batched_ref(
                || frames.to_vec(),
                |bufs| {
                    let mut n = 0;
                    for buf in bufs.iter_mut() {
                        let cmd = decode(black_box(buf));
                        if read {
                            n += read_all(&cmd);
                        }
                        drop(black_box(cmd));
                    }
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });
    }

    pub(super) fn bench_decode(group: &mut BenchmarkGroup<'_, WallTime>, frame: &BytesMut) {
        group.bench_function("reference", |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |buf| drop(black_box(decode(black_box(buf)))),
                BatchSize::SmallInput,
            )
        });
    }

    pub(super) fn bench_encode(
        group: &mut BenchmarkGroup<'_, WallTime>,
        case: &Case,
        ty: SerializeType,
        frame_len: usize,
    ) {
        let mut cmd = command(case, ty);
        group.bench_function("reference", |b| {
            let mut buf = BytesMut::with_capacity(frame_len * 2);
            b.iter(|| {
                encode(black_box(&mut cmd), &mut buf);
                black_box(&buf);
            })
        });
    }
}

/// `criterion_group!` makes a `pub fn` without docs; a private module keeps it unexported.
mod harness {
    use criterion::{criterion_group, Criterion};

    criterion_group! {
        name = benches;
        config = Criterion::default().without_plots();
        targets = super::bench_codec, super::bench_vectors
    }
}

criterion_main!(harness::benches);
