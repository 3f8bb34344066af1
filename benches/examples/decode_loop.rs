//! Loops for instruction counting with `valgrind --tool=callgrind` (deterministic, unlike wall
//! time on a shared machine). `decode_loop WHAT N`, WHAT one of:
//!
//! - `{json|rocketmq}-{send|heartbeat}[-read]`: N copies of the bench's `SEND_MESSAGE_V2`
//!   request (13 extension fields, 64-byte body) or heartbeat, decoded from one read buffer with
//!   `Codec::decode` and dropped (`-read`: every field read first);
//! - `vectors[-read]`: the 44 vector frames, N times, each from its own `BytesMut`;
//!   `vector-NN[-read]`: only the vector frame NN (its place in the fixture file, as
//!   `decode_time`'s `PER_VECTOR` rows name it), N times;
//! - `ref-…`: the same with `rocketmq-protocol` 1.0 (feature `reference`);
//! - `roundtrip-{json|rocketmq}`: N connection-machine round trips (as
//!   `benches/connection.rs` at 1 in flight);
//! - `enc-{json|rocketmq}-{0|128|4096|heartbeat}`: N encodes of the criterion bench's command
//!   (`SEND_MESSAGE_V2` with a body of that many bytes, or the heartbeat) into a reused, cleared
//!   `BytesMut`, as `encode/…/remora` does; `ref-enc-…` the same with the reference's
//!   `try_fast_header_encode` and the body, as `encode/…/reference` does.
//!
//! Instructions per operation: the program total minus an N = 0 run, divided by N (see
//! `benches/README.md`). The decode loops fill their read buffers to the same size for any
//! N up to 2000, so filling them cancels out; use N = 2000.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use remora_benches::fixtures::{self, read_all, vector_frames};
use remora_benches::machine::{pair, round_trips};
use remora_core::{Codec, Command, Decoded, SerializeType};

/// The bench's `SEND_MESSAGE_V2` request with a 64-byte body (`send`), or the heartbeat.
fn send_request(ty: SerializeType, send: bool) -> Command {
    if send {
        fixtures::send_request(ty, 64)
    } else {
        fixtures::heartbeat(ty)
    }
}

/// The criterion bench's command: `SEND_MESSAGE_V2` with a body of `body` bytes, or (`None`)
/// the heartbeat.
fn encode_command(ty: SerializeType, body: Option<usize>) -> Command {
    match body {
        Some(len) => fixtures::send_request(ty, len),
        None => fixtures::heartbeat(ty),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).cloned().unwrap_or_default();
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let read = what.ends_with("-read");
    let codec = Codec::default();
    let mut sum = 0usize;

    if let Some(ty) = what.strip_prefix("roundtrip-") {
        let ty = if ty == "json" {
            SerializeType::Json
        } else {
            SerializeType::RocketMq
        };
        let (mut client, mut server) = pair();
        for _ in 0..n {
            sum += round_trips(&mut client, &mut server, 1, ty, &Bytes::new());
        }
        println!("{sum}");
        return;
    }

    let reference = what.starts_with("ref-");
    let shape = what.trim_start_matches("ref-");
    if let Some(case) = shape.strip_prefix("enc-") {
        let (ty, size) = match case.split_once('-') {
            Some(("rocketmq", size)) => (SerializeType::RocketMq, size),
            Some((_, size)) => (SerializeType::Json, size),
            None => panic!("enc-{{json|rocketmq}}-{{0|128|4096|heartbeat}}"),
        };
        let body: Option<usize> = size.parse().ok();
        let mut buf = BytesMut::with_capacity(8192);
        if reference {
            sum += ref_encode(ty, body, n, &mut buf);
        } else {
            let cmd = encode_command(ty, body);
            for _ in 0..=n {
                buf.clear();
                codec
                    .encode_as(black_box(&cmd), ty, &mut buf)
                    .expect("encodes");
                sum += black_box(&buf).len();
            }
        }
        println!("{sum}");
        return;
    }
    let frames: Vec<BytesMut> = if shape.starts_with("vectors") {
        vector_frames()
    } else if let Some(nn) = shape.strip_prefix("vector-") {
        let nn: usize = nn
            .trim_end_matches("-read")
            .parse()
            .expect("vector-NN: NN a number");
        vec![vector_frames().swap_remove(nn)]
    } else {
        let ty = if shape.starts_with("rocketmq") {
            SerializeType::RocketMq
        } else {
            SerializeType::Json
        };
        let cmd = send_request(ty, shape.contains("send"));
        let mut frame = BytesMut::new();
        codec.encode_as(&cmd, ty, &mut frame).unwrap();
        vec![frame]
    };
    // One read buffer per frame, holding it N + 1 times (+1 to warm the buffer up, so that the
    // storage is shared before counting starts, as in a connection's read buffer). The buffers
    // are filled to the same size whatever N is, up to N = SETUP_FRAMES, so that filling them
    // cancels out of (total at N - total at 0) and only decoding is counted.
    const SETUP_FRAMES: usize = 2000;
    let copies = n.max(SETUP_FRAMES) + 1;
    let mut bufs: Vec<BytesMut> = frames
        .iter()
        .map(|f| {
            let mut b = BytesMut::with_capacity(f.len() * copies);
            for _ in 0..copies {
                b.extend_from_slice(f);
            }
            b
        })
        .collect();
    for _ in 0..=n {
        for buf in bufs.iter_mut() {
            if reference {
                sum += ref_decode(buf, read);
            } else {
                match codec.decode(black_box(buf)) {
                    Ok(Decoded::Command(cmd)) => {
                        if read {
                            sum += read_all(&cmd);
                        }
                        drop(black_box(cmd));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    println!("{sum}");
}

#[cfg(feature = "reference")]
fn ref_decode(buf: &mut BytesMut, read: bool) -> usize {
    use fixtures::reference;
    let cmd = reference::decode(buf);
    let n = if read { reference::read_all(&cmd) } else { 0 };
    drop(black_box(cmd));
    n
}

#[cfg(feature = "reference")]
fn ref_encode(ty: SerializeType, body: Option<usize>, n: usize, buf: &mut BytesMut) -> usize {
    use fixtures::reference;

    let ours = encode_command(ty, body);
    let ext: Vec<(&str, &str)> = ours.ext_fields().iter().collect();
    let mut cmd = reference::java_request(ours.code, ty, &ext, &ours.body_bytes());
    let mut sum = 0;
    for _ in 0..=n {
        reference::encode(black_box(&mut cmd), buf);
        sum += black_box(&*buf).len();
    }
    sum
}

#[cfg(not(feature = "reference"))]
fn ref_encode(_: SerializeType, _: Option<usize>, _: usize, _: &mut BytesMut) -> usize {
    panic!("build with --features reference")
}

#[cfg(not(feature = "reference"))]
fn ref_decode(_: &mut BytesMut, _: bool) -> usize {
    panic!("build with --features reference")
}
