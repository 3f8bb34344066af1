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
use remora_benches::fixtures::{
    body, java_request, read_all, vector_frames, HEART_BEAT, SEND_EXT, SEND_MESSAGE_V2,
};
use remora_core::{Codec, Command, Decoded, SerializeType};

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
            body: body(len),
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
    java_request(case.code, ty, case.ext, case.body.clone())
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
                            n += read_all(&cmd);
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

    use bytes::BytesMut;
    use criterion::measurement::WallTime;
    use criterion::{BatchSize, BenchmarkGroup};
    use remora_benches::fixtures::reference::{decode, encode, java_request, read_all};
    use remora_core::{Codec, Command, SerializeType};
    use rocketmq_protocol::RemotingCommand;

    use super::{remora_decode, Case};

    /// The case's request as a user of the reference builds it.
    fn command(case: &Case, ty: SerializeType) -> RemotingCommand {
        java_request(case.code, ty, case.ext, &case.body)
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
