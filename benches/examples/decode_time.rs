//! Wall time per decode as the minimum over many rounds: steadier than criterion's mean when
//! other work shares the machine, and the same operations as the `codec` bench.
//!
//! `decode_time [ROUNDS] [FILTER]`: for each case, ROUNDS rounds (default 600) of 250
//! frames (the vectors: 6 times the 44 frames), and prints each row's fastest round and its
//! median round, per frame. Rows whose name does not contain FILTER are skipped. Cases:
//!
//! - `rocketmq-{send0,send128,send4096,heartbeat}` (the criterion bench's `SEND_MESSAGE_V2`
//!   request with an empty, a 128-byte or a 4096-byte body, and the heartbeat);
//! - `json-{send0,send128,send4096,heartbeat}` the same in JSON (the send request's `i`, Java's
//!   message properties, holds 8 `\u00XX` escapes); `json-send-one`: that with one escape left,
//!   `json-send-plain`: none; `json-body`: the heartbeat with a 4-byte body (split off as
//!   `Bytes` rather than skipped); `json-tiny`: that and 13 one-byte fields;
//!   `json-general-send0`: `json-send0` with a space after every key's colon (the general parser
//!   takes it);
//! - `vectors` (the 44 shared vector frames, both header types); `vectors-json` (its 22 JSON
//!   frames) and `vectors-small-json` (the 11 of those with no extension field: the fixed
//!   fields and at most a remark), each alternating its frames as `vectors` does; with
//!   `PER_VECTOR` set in the environment, also each vector alone as `vector-NN`.
//!
//! Each case is timed
//! - `fresh`: each frame in its own freshly cloned `BytesMut`, as the criterion bench's
//!   `iter_batched_ref` gives it (the first `split_to` of such a buffer allocates to share
//!   it); `shared`: frames taken off one read buffer that already shares its storage, as a
//!   connection's is.
//!   With `PASSES=N` in the environment a fresh round holds N passes over the case's frames
//!   instead (criterion's batches of fresh copies outgrow the caches: `PASSES=600` on the
//!   vectors, ~90 MB a round, reads every frame from memory);
//! - by `remora` (`Codec::decode`, the command dropped), `remora-read` (every field read first),
//!   `floor` (`split_to(len).freeze()` and drop) and, with `--features reference`,
//!   `reference` / `reference-read` (`rocketmq-protocol` 1.0).
//!
//! The minimum is what the code costs when nothing else runs on its core: compare two builds
//! (or Remora and the reference) by their minimums, run back to back.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use remora_benches::fixtures::{
    self, java_request, read_all, vector_frames, HEART_BEAT, SEND_EXT, SEND_MESSAGE_V2,
};
use remora_core::{Codec, Command, Decoded, SerializeType};

const PER_ROUND: usize = 250;

/// How the send request's message properties (`i`) are written: with Java's `\u{1}`/`\u{2}`
/// separators (escaped in JSON), with one of them left, or with none.
#[derive(Clone, Copy, PartialEq)]
enum Escapes {
    All,
    One,
    None,
}

/// The bench's `SEND_MESSAGE_V2` request (`send`) or heartbeat, in `ty`, with a body of `body`
/// bytes, its message properties escaped as `escapes` says.
fn send_request(ty: SerializeType, send: bool, body: usize, escapes: Escapes) -> Command {
    if !send {
        return java_request(HEART_BEAT, ty, &[], fixtures::body(body));
    }
    let plain = |v: &str| v.replace('\u{1}', "1").replace('\u{2}', "2");
    let ext: Vec<(&str, String)> = SEND_EXT
        .iter()
        .map(|&(k, v)| {
            let v = match escapes {
                Escapes::All => v.to_string(),
                Escapes::One => {
                    let first = v.find('\u{1}').map_or(0, |i| i + 1);
                    format!("{}{}", &v[..first], plain(&v[first..]))
                }
                Escapes::None => plain(v),
            };
            (k, v)
        })
        .collect();
    let ext: Vec<(&str, &str)> = ext.iter().map(|(k, v)| (*k, v.as_str())).collect();
    java_request(SEND_MESSAGE_V2, ty, &ext, fixtures::body(body))
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Remora,
    RemoraRead,
    Floor,
    Reference,
    ReferenceRead,
}

#[inline(never)]
fn decode_one(codec: &Codec, who: Who, buf: &mut BytesMut, len: usize) -> usize {
    match who {
        Who::Remora | Who::RemoraRead => match codec.decode(black_box(buf)) {
            Ok(Decoded::Command(cmd)) => {
                let n = if who == Who::RemoraRead {
                    read_all(&cmd)
                } else {
                    0
                };
                drop(black_box(cmd));
                n
            }
            other => panic!("{other:?}"),
        },
        Who::Floor => {
            drop(black_box(buf.split_to(len).freeze()));
            0
        }
        Who::Reference | Who::ReferenceRead => ref_decode(buf, who == Who::ReferenceRead),
    }
}

#[cfg(feature = "reference")]
fn ref_decode(buf: &mut BytesMut, read: bool) -> usize {
    use fixtures::reference;
    let cmd = reference::decode(buf);
    let n = if read { reference::read_all(&cmd) } else { 0 };
    drop(black_box(cmd));
    n
}

#[cfg(not(feature = "reference"))]
fn ref_decode(_: &mut BytesMut, _: bool) -> usize {
    unreachable!("the reference rows need --features reference")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(600);
    let filter = args.next().unwrap_or_default();
    let codec = Codec::default();
    let mut whos = vec![
        ("remora", Who::Remora),
        ("remora-read", Who::RemoraRead),
        ("floor", Who::Floor),
    ];
    if cfg!(feature = "reference") {
        whos.push(("reference", Who::Reference));
        whos.push(("reference-read", Who::ReferenceRead));
    }
    let mut cases: Vec<(&str, Vec<BytesMut>)> = Vec::new();
    let (rocketmq, json) = (SerializeType::RocketMq, SerializeType::Json);
    let mut tiny = send_request(json, false, 4, Escapes::All);
    for k in [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "m", "n",
    ] {
        tiny = tiny.with_ext(k, "0");
    }
    for (name, cmd) in [
        (
            "rocketmq-send0",
            send_request(rocketmq, true, 0, Escapes::All),
        ),
        (
            "rocketmq-send128",
            send_request(rocketmq, true, 128, Escapes::All),
        ),
        (
            "rocketmq-send4096",
            send_request(rocketmq, true, 4096, Escapes::All),
        ),
        (
            "rocketmq-heartbeat",
            send_request(rocketmq, false, 0, Escapes::All),
        ),
        ("json-send0", send_request(json, true, 0, Escapes::All)),
        ("json-send128", send_request(json, true, 128, Escapes::All)),
        (
            "json-send4096",
            send_request(json, true, 4096, Escapes::All),
        ),
        ("json-send-one", send_request(json, true, 0, Escapes::One)),
        (
            "json-send-plain",
            send_request(json, true, 0, Escapes::None),
        ),
        ("json-heartbeat", send_request(json, false, 0, Escapes::All)),
        ("json-body", send_request(json, false, 4, Escapes::All)),
        ("json-tiny", tiny),
    ] {
        let mut frame = BytesMut::new();
        codec.encode(&cmd, &mut frame).unwrap();
        cases.push((name, vec![frame]));
    }
    // The JSON send request as a peer with other habits writes it (whitespace after the
    // colons): the general parser takes it.
    {
        let mut frame = BytesMut::new();
        codec
            .encode(&send_request(json, true, 0, Escapes::All), &mut frame)
            .unwrap();
        let header_len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(frame[8..8 + header_len].to_vec()).unwrap();
        let spaced = header.replace("\":", "\": ");
        let mut general = BytesMut::new();
        general.extend_from_slice(&((4 + spaced.len()) as u32).to_be_bytes());
        general.extend_from_slice(&(spaced.len() as u32).to_be_bytes());
        general.extend_from_slice(spaced.as_bytes());
        cases.push(("json-general-send0", vec![general]));
    }
    cases.push(("vectors", vector_frames()));
    // The 22 JSON frames of the vectors, and of them the 11 whose header holds no extension
    // field (the fixed fields and at most a remark: 00 02 06 08 10 12 14 18 36 38 40),
    // alternating as in `vectors`.
    let json_frames: Vec<(usize, BytesMut)> = vector_frames()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .collect();
    const SMALL_JSON: [usize; 11] = [0, 2, 6, 8, 10, 12, 14, 18, 36, 38, 40];
    cases.push((
        "vectors-small-json",
        json_frames
            .iter()
            .filter(|(i, _)| SMALL_JSON.contains(i))
            .map(|(_, f)| f.clone())
            .collect(),
    ));
    cases.push((
        "vectors-json",
        json_frames.into_iter().map(|(_, f)| f).collect(),
    ));
    if std::env::var_os("PER_VECTOR").is_some() {
        // Each vector alone, as `vector-NN` (NN: its place in the fixture file).
        for (i, frame) in vector_frames().into_iter().enumerate() {
            let name: &'static str = format!("vector-{i:02}").leak();
            cases.push((name, vec![frame]));
        }
    }
    let mut sum = 0usize;
    for (case, frames) in &cases {
        // Frames per round: 250, or a whole number of passes over the vectors.
        let warm_passes = PER_ROUND.div_ceil(frames.len());
        for fresh in [true, false] {
            // `PASSES` (fresh buffers only): that many passes a round instead, so that a round's
            // buffers outgrow the caches as criterion's batches do.
            let passes = match std::env::var("PASSES").ok().and_then(|v| v.parse().ok()) {
                Some(p) if fresh => p,
                _ => warm_passes,
            };
            let per_round = passes * frames.len();
            for &(name, who) in &whos {
                let row = format!("{case} {} {name}", if fresh { "fresh" } else { "shared" });
                if !row.contains(filter.as_str()) {
                    continue;
                }
                let mut times = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    if fresh {
                        let mut bufs: Vec<BytesMut> =
                            (0..passes).flat_map(|_| frames.iter().cloned()).collect();
                        let t = Instant::now();
                        for b in bufs.iter_mut() {
                            let len = b.len();
                            sum += decode_one(&codec, who, b, len);
                        }
                        times.push(t.elapsed().as_nanos() as f64 / per_round as f64);
                    } else {
                        // One buffer per frame shape, holding it `passes` times, its storage
                        // already shared (as a connection's read buffer is).
                        let mut bufs: Vec<(BytesMut, usize)> = frames
                            .iter()
                            .map(|f| {
                                let mut b = BytesMut::with_capacity(f.len() * (passes + 1));
                                for _ in 0..=passes {
                                    b.extend_from_slice(f);
                                }
                                drop(b.split_to(f.len()).freeze());
                                (b, f.len())
                            })
                            .collect();
                        let t = Instant::now();
                        for _ in 0..passes {
                            for (b, len) in bufs.iter_mut() {
                                sum += decode_one(&codec, who, b, *len);
                            }
                        }
                        times.push(t.elapsed().as_nanos() as f64 / per_round as f64);
                    }
                }
                times.sort_by(|a, b| a.total_cmp(b));
                println!(
                    "{row:40} min {:8.1} ns  med {:8.1} ns",
                    times[0],
                    times[times.len() / 2]
                );
            }
        }
    }
    black_box(sum);
}
