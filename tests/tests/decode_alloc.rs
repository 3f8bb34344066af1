//! Decoding allocates nothing: every frame of the shared vectors (0 to 50 extension fields,
//! escapes, unicode, remarks, bodies), and the send request a Java producer sends (13 fields,
//! `\u0001` escapes in `properties`) in both header types and both JSON key orders, decode from a
//! read buffer and have every field read with zero heap allocations per frame.
//!
//! A counting global allocator counts the allocations made by this test's thread.

use bytes::BytesMut;
use remora_benches::fixtures::{self, read_all};
use remora_core::{Codec, Command, Decoded, SerializeType};
use remora_tests::alloc::{thread_allocations, ThreadCounting};
use remora_tests::{read_fixture, unhex};

#[global_allocator]
static GLOBAL: ThreadCounting = ThreadCounting;

/// The producer's `SEND_MESSAGE_V2` request as the codec bench sends it, with a 128-byte body.
fn send_request(ty: SerializeType) -> Command {
    fixtures::send_request(ty, 128)
}

#[test]
fn decoding_a_frame_allocates_nothing() {
    let codec = Codec::default();
    let mut frames: Vec<Vec<u8>> = read_fixture("remoting-vectors.json")["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| unhex(v["hex"].as_str().unwrap()))
        .collect();
    assert_eq!(frames.len(), 44);
    for ty in [SerializeType::Json, SerializeType::RocketMq] {
        let mut out = BytesMut::new();
        codec.encode_as(&send_request(ty), ty, &mut out).unwrap();
        frames.push(out.to_vec());
    }
    // The same request in rocketmq-rust's key order, with its explicit nulls.
    let rust_order = br#"{"code":310,"language":"JAVA","version":453,"opaque":9,"flag":0,"remark":null,"extFields":{"b":"TopicTest","i":"KEYS\u0001A\u0002"},"serializeTypeCurrentRPC":"JSON"}"#;
    let mut frame = Vec::new();
    frame.extend_from_slice(&((rust_order.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(&(rust_order.len() as u32).to_be_bytes());
    frame.extend_from_slice(rust_order);
    frames.push(frame);

    // A read buffer holding a warm-up frame and then every frame: the first split of a buffer
    // makes its storage shared (one allocation, which any decoder that hands out `Bytes` pays
    // once per buffer, not per frame); after that, nothing may allocate. The warm-up frame has
    // fields and a body, so the command keeps it (a frame with nothing to read later is skipped,
    // not split off).
    let mut buf = BytesMut::with_capacity(frames.iter().map(Vec::len).sum::<usize>() * 2);
    buf.extend_from_slice(&frames[44]);
    for frame in &frames {
        buf.extend_from_slice(frame);
    }
    let Ok(Decoded::Command(_)) = codec.decode(&mut buf) else {
        panic!("warm-up frame")
    };

    for (i, frame) in frames.iter().enumerate() {
        let (read, allocs) = thread_allocations(|| {
            let Ok(Decoded::Command(cmd)) = codec.decode(&mut buf) else {
                panic!("frame {i} did not decode")
            };
            read_all(&cmd)
        });
        assert!(read > 0);
        let fields = codec
            .decode_frame(&bytes::Bytes::copy_from_slice(frame))
            .unwrap()
            .ext_fields()
            .len();
        assert_eq!(
            allocs, 0,
            "frame {i} ({fields} extension fields) allocated {allocs} times"
        );
    }
    assert!(buf.is_empty());

    // The counter works: a built request allocates.
    let (_, allocs) = thread_allocations(|| send_request(SerializeType::Json));
    assert!(allocs > 0);
}
