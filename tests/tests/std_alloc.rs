//! The std driver's hot path, counted by a global allocator wrapper:
//! - a 1 MiB body goes out without being copied: the client's whole send (encode, queue,
//!   vectored write) allocates nothing near the body's size, as a copy into a transmit buffer
//!   would have to;
//! - bodies of every size read into the machine's own buffer (no copy) arrive byte for byte.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use remora_core::{codes, Command};
use remora_std::{Client, ClientConfig, Server};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

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
        LARGEST.store(0, Ordering::Relaxed);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        go_tx.send(frame_len).unwrap();
        client.oneway(command).unwrap();
        let got = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let largest = LARGEST.load(Ordering::Relaxed);
        assert_eq!(got, frame_len, "the peer got the whole frame");
        assert!(
            largest < 64 * 1024,
            "largest allocation while sending a {size}-byte body: {largest} bytes"
        );
        assert!(allocations < 16, "{allocations} allocations for one send");
    }
    drop(go_tx);
    client.close();
    peer.join().unwrap();
}

#[test]
fn bodies_of_every_size_arrive_byte_for_byte() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::bind("127.0.0.1:0", |request: Command| {
        let body = request.body.clone();
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
        assert_eq!(response.body.len(), len);
        assert!(response.body[..] == body[..], "body of {len} bytes differs");
    }
    client.close();
    server.stop();
}
