//! The std driver's hot path, counted by a global allocator wrapper:
//! - a 1 MiB body goes out without being copied: the client's whole send (encode, queue,
//!   vectored write) allocates nothing near the body's size, as a copy into a transmit buffer
//!   would have to;
//! - bodies of every size read into the machine's own buffer (no copy) arrive byte for byte;
//! - a call through the std client allocates nothing in steady state (the server runs in a child
//!   process, so only the client's allocations are counted): what remains is per buffer filled
//!   (16 KiB of frames sent, 60 KiB received), not per call.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::BytesMut;
use remora_core::{codes, Command, SerializeType};
use remora_std::{Client, ClientConfig, Server};

use remora_tests::alloc::{allocations, bytes, numbered_request, take_largest, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: usize = 1 << 20;

/// The counters are global: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_one_mib_body_is_sent_without_a_copy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A peer that reads and discards into a fixed buffer (allocating nothing per byte).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<usize>();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(expected) = go_rx.recv() {
            let mut got = 0;
            while got < expected {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            done_tx.send(got).unwrap();
        }
    });
    let client = Client::connect(addr, ClientConfig::default()).unwrap();
    // Each body is larger than any frame this connection has sent before, so a copy into its
    // transmit buffer could not reuse an earlier allocation: it would have to make one of the
    // body's size.
    for size in [MIB, 2 * MIB] {
        let command = Command::request(codes::SEND_MESSAGE).with_body(vec![0x5a; size]);
        let frame_len = remora_core::Codec::default()
            .encoded_len(&command, remora_core::SerializeType::Json)
            .unwrap();
        take_largest();
        let before = bytes();
        go_tx.send(frame_len).unwrap();
        client.oneway(command).unwrap();
        let got = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let allocated = bytes() - before;
        let largest = take_largest();
        assert_eq!(got, frame_len, "the peer got the whole frame");
        // (The client's reader may grow its 64 KiB read buffer meanwhile.)
        assert!(
            largest < size / 4,
            "largest allocation while sending a {size}-byte body: {largest} bytes"
        );
        // In all (the writer thread a slow peer starts included), far less than the body.
        assert!(
            allocated < size / 4,
            "{allocated} bytes allocated while sending a {size}-byte body"
        );
    }
    drop(go_tx);
    client.close();
    peer.join().unwrap();
}

#[test]
fn bodies_of_every_size_arrive_byte_for_byte() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::bind("127.0.0.1:0", |request: Command| {
        let body = request.body_bytes();
        request.response(codes::SUCCESS).with_body(body)
    })
    .unwrap();
    let client = Client::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in [
        0,
        1,
        511,
        512,
        4095,
        65_535,
        65_536,
        65_537,
        200_000,
        MIB,
        MIB + 3,
    ] {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let response = client
            .call(
                Command::request(310).with_body(body.clone()),
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(response.body().len(), len);
        assert!(
            response.body()[..] == body[..],
            "body of {len} bytes differs"
        );
    }
    client.close();
    server.stop();
}

/// Set in the child process that serves [`per_call_allocations_of_the_std_client`].
const SERVER_ENV: &str = "REMORA_STD_ALLOC_SERVER";

/// Not a test of its own: the body of the child process the allocation test starts (it returns
/// at once otherwise). Serves echo on 127.0.0.1, prints its port, stops when stdin closes.
#[test]
fn echo_server_process() {
    if std::env::var_os(SERVER_ENV).is_none() {
        return;
    }
    let server = Server::bind("127.0.0.1:0", |request: Command| {
        let body = request.body_bytes();
        request.response(codes::SUCCESS).with_body(body)
    })
    .unwrap();
    println!("PORT {}", server.local_addr().port());
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    server.stop();
}

/// Starts this test binary again as the echo server; returns it and its port. A thread drains
/// its output until it exits.
fn server_process() -> (Child, u16) {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", "echo_server_process", "--nocapture"])
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..20 {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(port) = line.strip_prefix("PORT ") {
            let port = port.trim().parse().unwrap();
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return (child, port);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server process did not report its port");
}

/// Makes `calls` calls from each of `threads` threads and returns the allocations counted while
/// they ran. Each request body is built in a reused buffer, as a careful application would.
fn load(client: &Client, threads: usize, calls: usize, ty: SerializeType) -> u64 {
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut buf = BytesMut::with_capacity(64);
                // This thread's first call sets up its per-thread state: not counted.
                client
                    .call(Command::request(310), Duration::from_secs(10))
                    .unwrap();
                barrier.wait();
                for i in 0..calls {
                    let request = numbered_request(&mut buf, (t * calls + i) as u64, ty);
                    let body = request.body_bytes();
                    let response = client.call(request, Duration::from_secs(10)).unwrap();
                    assert_eq!(response.body(), &body[..]);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let before = allocations();
        barrier.wait();
        allocations() - before
    })
}

#[test]
fn per_call_allocations_of_the_std_client() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut child, port) = server_process();
    let client = Client::connect(("127.0.0.1", port), ClientConfig::default()).unwrap();
    let codec = remora_core::Codec::default();
    for (threads, ty) in [
        (1, SerializeType::RocketMq),
        (1, SerializeType::Json),
        (8, SerializeType::RocketMq),
    ] {
        load(&client, threads, 1_000, ty); // warm up: buffers, threads' slots
        let calls = 4_000;
        let allocations = load(&client, threads, calls / threads, ty);
        eprintln!("{allocations} allocations for {calls} calls from {threads} thread(s), {ty:?}");
        // What may remain is per buffer, not per call: a transmit buffer (16 KiB, where small
        // frames are encoded) and a read buffer (grown by 64 KiB when under 4 KiB is free) are
        // replaced once their bytes are used up, two allocations each (the storage and, at its
        // first split, the `bytes` crate's shared header). One thread's buffer is usually free
        // again when it fills and is reused in place; with eight threads a write is nearly always
        // in flight, so nearly every buffer is new. A per-call allocation would be 4,000 more.
        let frame = codec
            .encoded_len(
                &numbered_request(&mut BytesMut::new(), 0, ty).response(codes::SUCCESS),
                ty,
            )
            .unwrap()
            .max(
                codec
                    .encoded_len(&numbered_request(&mut BytesMut::new(), 0, ty), ty)
                    .unwrap(),
            );
        let buffers = (calls * frame).div_ceil(16 * 1024) + (calls * frame).div_ceil(60 * 1024);
        let allowed = 2 * (buffers + 2 * threads) as u64;
        assert!(
            allocations <= allowed && allocations * 25 < calls as u64,
            "{allocations} allocations for {calls} calls from {threads} thread(s), {ty:?} \
             ({frame}-byte frames: at most {allowed} for the buffers they fill)"
        );
    }
    client.close();
    drop(child.stdin.take());
    let _ = child.wait();
}
