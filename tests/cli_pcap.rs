//! `remora decode --pcap` on captures the tests write themselves (pcap and pcapng, several link
//! types, IPv4 and IPv6): out-of-order and retransmitted segments, a direction that starts
//! mid-frame, a segment the capture lost, and truncated or corrupt files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use bytes::BytesMut;
use etherparse::PacketBuilder;
use remora_core::{Codec, Command as Frame, SerializeType};
use serde_json::Value;

fn frame(cmd: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    Codec::default().encode(cmd, &mut out).unwrap();
    out.to_vec()
}

/// One captured packet: time (ns since the epoch), sender, receiver, seq, SYN, ack, payload.
struct Pkt {
    ts_ns: u64,
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    syn: bool,
    ack: Option<u32>,
    payload: Vec<u8>,
}

fn ip_packet(p: &Pkt) -> Vec<u8> {
    let builder = match (p.src, p.dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            PacketBuilder::ipv4(s.ip().octets(), d.ip().octets(), 64)
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            PacketBuilder::ipv6(s.ip().octets(), d.ip().octets(), 64)
        }
        _ => unreachable!(),
    };
    let mut tcp = builder.tcp(p.src.port(), p.dst.port(), p.seq, 65535);
    if p.syn {
        tcp = tcp.syn();
    }
    if let Some(a) = p.ack {
        tcp = tcp.ack(a);
    }
    let mut out = Vec::new();
    tcp.write(&mut out, &p.payload).unwrap();
    out
}

fn link(linktype: u16, ip: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut out = Vec::new();
    match linktype {
        1 => {
            out.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
            out.extend_from_slice(&ethertype.to_be_bytes());
        }
        0 => out.extend_from_slice(&(if ethertype == 0x0800 { 2u32 } else { 30 }).to_ne_bytes()),
        113 => {
            out.extend_from_slice(&[0, 0, 3, 4, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&ethertype.to_be_bytes());
        }
        276 => {
            out.extend_from_slice(&ethertype.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 1, 3, 4, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        101 => {}
        _ => unreachable!(),
    }
    out.extend_from_slice(ip);
    out
}

fn pcap(linktype: u16, packets: &[Pkt]) -> Vec<u8> {
    pcap_as(linktype, packets, false, false)
}

/// Legacy pcap, microsecond or nanosecond timestamps, little- or big-endian.
fn pcap_as(linktype: u16, packets: &[Pkt], nanos: bool, big_endian: bool) -> Vec<u8> {
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut out = Vec::new();
    out.extend_from_slice(&u32b(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    out.extend_from_slice(&u16b(2));
    out.extend_from_slice(&u16b(4));
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&u32b(262_144));
    out.extend_from_slice(&u32b(u32::from(linktype)));
    for p in packets {
        let data = link(linktype, &ip_packet(p));
        let frac = p.ts_ns % 1_000_000_000;
        out.extend_from_slice(&u32b((p.ts_ns / 1_000_000_000) as u32));
        out.extend_from_slice(&u32b(if nanos { frac } else { frac / 1000 } as u32));
        out.extend_from_slice(&u32b(data.len() as u32));
        out.extend_from_slice(&u32b(data.len() as u32));
        out.extend_from_slice(&data);
    }
    out
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

fn block(ty: u32, body: &[u8]) -> Vec<u8> {
    let len = (12 + body.len()) as u32;
    let mut out = ty.to_le_bytes().to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// pcapng with one interface of nanosecond resolution.
fn pcapng(linktype: u16, packets: &[Pkt]) -> Vec<u8> {
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    let mut out = block(0x0a0d_0d0a, &shb);
    let mut idb = linktype.to_le_bytes().to_vec();
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&262_144u32.to_le_bytes());
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0]); // if_tsresol = 10^-9, padded
    idb.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
    out.extend(block(1, &idb));
    for p in packets {
        let data = link(linktype, &ip_packet(p));
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((p.ts_ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(p.ts_ns as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&data);
        pad4(&mut epb);
        out.extend(block(6, &epb));
    }
    out
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("remora-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn decode_pcap(name: &str, bytes: &[u8]) -> (Output, Vec<Value>, String) {
    let file = TempFile::new(name, bytes);
    let out = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["decode", "--pcap", file.0.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    (out, lines, stderr)
}

const T0: u64 = 1_700_000_000_000_000_000;

fn pkt(ms: u64, src: SocketAddr, dst: SocketAddr, seq: u32, payload: &[u8]) -> Pkt {
    Pkt {
        ts_ns: T0 + ms * 1_000_000,
        src,
        dst,
        seq,
        syn: false,
        ack: None,
        payload: payload.to_vec(),
    }
}

fn syn(ms: u64, src: SocketAddr, dst: SocketAddr, seq: u32) -> Pkt {
    Pkt {
        syn: true,
        ..pkt(ms, src, dst, seq, b"")
    }
}

/// A route lookup and a send from the client, two answers from the server; the client's bytes
/// arrive out of order and retransmitted, the server's with an overlapping retransmission.
fn exchange(client: SocketAddr, server: SocketAddr) -> (Vec<Pkt>, Vec<Frame>) {
    let f1 = Frame::request(105)
        .with_opaque(1)
        .with_ext("topic", "TopicTest");
    let f2 = Frame::request(10)
        .with_opaque(2)
        .with_serialize_type(SerializeType::RocketMq)
        .with_ext("topic", "TopicTest")
        .with_body(vec![b'm'; 3000]);
    let r1 = f1.response(0).with_body(&b"{\"brokerDatas\":[]}"[..]);
    let r2 = f2.response(0).with_ext("msgId", "ABC");
    let c: Vec<u8> = [frame(&f1), frame(&f2)].concat();
    let s: Vec<u8> = [frame(&r1), frame(&r2)].concat();
    let (ci, si) = (1000u32, 5000u32);
    let packets = vec![
        syn(0, client, server, ci - 1),
        syn(1, server, client, si - 1),
        pkt(2, client, server, ci, &c[..10]),
        pkt(3, client, server, ci + 40, &c[40..]), // early
        pkt(4, server, client, si, &s[..frame(&r1).len() + 5]), // completes r1
        pkt(5, client, server, ci, &c[..10]),      // retransmission
        pkt(6, client, server, ci + 10, &c[10..40]), // completes f1 and f2
        pkt(
            7,
            server,
            client,
            si + frame(&r1).len() as u32 + 2,
            &s[frame(&r1).len() + 2..],
        ),
    ];
    (packets, vec![r1, f1, f2, r2])
}

fn check_exchange(lines: &[Value], expected: &[Frame], client: SocketAddr, server: SocketAddr) {
    let codes: Vec<(i64, i64, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["code"].as_i64().unwrap(),
                l["opaque"].as_i64().unwrap(),
                l["flag"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, i64, i64)> = expected
        .iter()
        .map(|f| (i64::from(f.code), i64::from(f.opaque), i64::from(f.flag)))
        .collect();
    assert_eq!(codes, want, "frames in capture order");
    let ts: Vec<f64> = lines.iter().map(|l| l["ts"].as_f64().unwrap()).collect();
    let t0 = (T0 / 1_000_000_000) as f64;
    for (got, ms) in ts.iter().zip([4.0, 6.0, 6.0, 7.0]) {
        assert!((got - (t0 + ms / 1000.0)).abs() < 1e-5, "{got} vs {ms} ms");
    }
    assert_eq!(lines[0]["src"], server.to_string());
    assert_eq!(lines[0]["dst"], client.to_string());
    assert_eq!(lines[1]["src"], client.to_string());
    assert_eq!(lines[1]["ext_fields"]["topic"], "TopicTest");
    assert_eq!(lines[2]["serialize_type"], "ROCKETMQ");
    assert_eq!(lines[2]["body_hex"].as_str().unwrap().len(), 6000);
    assert_eq!(lines[3]["ext_fields"]["msgId"], "ABC");
    let keys: Vec<&str> = lines[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "ts",
            "src",
            "dst",
            "serialize_type",
            "code",
            "language",
            "language_code",
            "version",
            "opaque",
            "flag",
            "remark",
            "ext_fields",
            "body_hex"
        ]
    );
}

#[test]
fn reassembles_out_of_order_and_retransmitted_segments_on_every_link_type() {
    let v4: (SocketAddr, SocketAddr) = (
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.0.2:9876".parse().unwrap(),
    );
    let v6: (SocketAddr, SocketAddr) = (
        "[fd00::1]:40000".parse().unwrap(),
        "[fd00::2]:10911".parse().unwrap(),
    );
    for (linktype, (client, server)) in [(1, v4), (0, v6), (113, v4), (276, v6), (101, v4), (1, v6)]
    {
        let (packets, expected) = exchange(client, server);
        for (form, bytes) in [
            ("pcap", pcap(linktype, &packets)),
            ("ns.pcap", pcap_as(linktype, &packets, true, false)),
            ("be.pcap", pcap_as(linktype, &packets, true, true)),
            ("pcapng", pcapng(linktype, &packets)),
        ] {
            let (out, lines, stderr) = decode_pcap(&format!("x{linktype}.{form}"), &bytes);
            assert!(out.status.success(), "{linktype} {form}: {stderr}");
            assert!(
                stderr.is_empty(),
                "{linktype} {form}: nothing to say: {stderr}"
            );
            check_exchange(&lines, &expected, client, server);
        }
    }
}

#[test]
fn a_direction_that_starts_mid_frame_is_resynchronised_and_said_so() {
    let (client, server): (SocketAddr, SocketAddr) = (
        "[fd00::1]:40000".parse().unwrap(),
        "[fd00::2]:10911".parse().unwrap(),
    );
    let f0 = frame(&Frame::request(10).with_opaque(9).with_body(vec![b'z'; 200]));
    let f1 = frame(&Frame::request(34).with_opaque(10));
    let f2 = frame(&Frame::request(10).with_opaque(11).with_body("hello"));
    // The capture begins 20 bytes before the end of f0.
    let tail = &f0[f0.len() - 20..];
    let stream: Vec<u8> = [tail, &f1[..], &f2[..]].concat();
    let seq = 70_000u32;
    let packets = vec![
        pkt(0, client, server, seq, &stream[..25]),
        pkt(1, client, server, seq + 25, &stream[25..]),
    ];
    let (out, lines, stderr) = decode_pcap("late.pcapng", &pcapng(276, &packets));
    assert!(out.status.success(), "{stderr}");
    let opaques: Vec<i64> = lines
        .iter()
        .map(|l| l["opaque"].as_i64().unwrap())
        .collect();
    assert_eq!(opaques, [10, 11], "the partial frame is not printed");
    assert!(stderr.contains("no SYN"), "{stderr}");
    assert!(
        stderr.contains("skipped 20 bytes") && stderr.contains("resynchronised"),
        "{stderr}"
    );
    let ts = lines[1]["ts"].as_f64().unwrap();
    assert!(
        (ts - 1_700_000_000.001).abs() < 1e-5,
        "nanosecond pcapng time: {ts}"
    );
}

#[test]
fn a_segment_the_capture_lost_is_skipped_when_the_receiver_acks_past_it() {
    let (client, server): (SocketAddr, SocketAddr) = (
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:9876".parse().unwrap(),
    );
    let f1 = frame(&Frame::request(34).with_opaque(1));
    let f2 = frame(&Frame::request(10).with_opaque(2).with_body(vec![b'q'; 100]));
    let f3 = frame(&Frame::request(10).with_opaque(3).with_body("after"));
    let c: Vec<u8> = [&f1[..], &f2[..], &f3[..]].concat();
    let ci = 1u32;
    let half = f1.len() + f2.len() / 2;
    let end = c.len() as u32;
    let mut ack = pkt(4, server, client, 900, b"");
    ack.ack = Some(ci + end);
    let packets = vec![
        syn(0, client, server, ci - 1),
        pkt(1, client, server, ci, &c[..f1.len()]),
        // c[f1.len()..half] was lost by the capture.
        pkt(
            2,
            client,
            server,
            ci + half as u32,
            &c[half..f1.len() + f2.len()],
        ),
        pkt(3, client, server, ci + (f1.len() + f2.len()) as u32, &f3),
        ack,
    ];
    let (out, lines, stderr) = decode_pcap("lost.pcap", &pcap(1, &packets));
    assert!(out.status.success(), "{stderr}");
    let opaques: Vec<i64> = lines
        .iter()
        .map(|l| l["opaque"].as_i64().unwrap())
        .collect();
    assert_eq!(opaques, [1, 3], "the frame with a hole is not printed");
    assert!(stderr.contains("bytes missing"), "{stderr}");
    let ts = lines[1]["ts"].as_f64().unwrap();
    assert!(
        (ts - 1_700_000_000.004).abs() < 1e-5,
        "printed when the ACK showed the loss: {ts}"
    );
}

#[test]
fn truncated_and_corrupt_captures_get_one_line() {
    let (client, server): (SocketAddr, SocketAddr) = (
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.0.2:9876".parse().unwrap(),
    );
    let (packets, _) = exchange(client, server);
    let whole = pcap(1, &packets);
    // Cut inside the last record: the frames before it are printed, then a one-line error.
    let (out, lines, stderr) = decode_pcap("cut.pcap", &whole[..whole.len() - 30]);
    assert!(!out.status.success());
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(lines.len(), 3, "frames before the cut are printed");

    let ng = pcapng(1, &packets);
    let (out, _, stderr) = decode_pcap("cut.pcapng", &ng[..ng.len() - 7]);
    assert!(!out.status.success());
    assert!(stderr.contains("truncated"), "{stderr}");

    for (name, bytes) in [
        ("empty.pcap", Vec::new()),
        (
            "text.pcap",
            b"this is not a capture at all, just text".to_vec(),
        ),
        ("header.pcap", whole[..10].to_vec()),
    ] {
        let (out, _, stderr) = decode_pcap(name, &bytes);
        assert!(!out.status.success(), "{name}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
    }

    // A record that claims 4 GiB.
    let mut huge = whole[..24].to_vec();
    huge.extend_from_slice(&[0; 8]);
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0; 64]);
    let (out, _, stderr) = decode_pcap("huge.pcap", &huge);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Every prefix and many corruptions of a capture: an answer, never a panic.
    for n in (0..whole.len()).step_by(37) {
        let (out, _, stderr) = decode_pcap("prefix.pcap", &whole[..n]);
        assert!(!stderr.contains("panicked"), "prefix {n}: {stderr}");
        assert!(out.status.code().is_some());
    }
    let mut bad = ng.clone();
    for i in (0..bad.len()).step_by(53) {
        let keep = bad[i];
        bad[i] ^= 0xff;
        let (_, _, stderr) = decode_pcap("flip.pcapng", &bad);
        assert!(!stderr.contains("panicked"), "byte {i}: {stderr}");
        bad[i] = keep;
    }
}

#[test]
fn a_new_connection_on_the_same_addresses_starts_a_new_stream() {
    let (client, server): (SocketAddr, SocketAddr) = (
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:9876".parse().unwrap(),
    );
    let f1 = frame(&Frame::request(34).with_opaque(1));
    let f2 = frame(&Frame::request(10).with_opaque(2).with_body("x"));
    let packets = vec![
        syn(0, client, server, 99),
        pkt(1, client, server, 100, &f1),
        pkt(2, client, server, 100 + f1.len() as u32, &f2[..5]), // cut off by a reset
        syn(3, client, server, 7_000_000),
        pkt(4, client, server, 7_000_001, &f2),
    ];
    let (out, lines, stderr) = decode_pcap("reuse.pcap", &pcap(1, &packets));
    assert!(out.status.success(), "{stderr}");
    let opaques: Vec<i64> = lines
        .iter()
        .map(|l| l["opaque"].as_i64().unwrap())
        .collect();
    assert_eq!(opaques, [1, 2]);
    assert!(stderr.contains("reuses"), "{stderr}");
    assert!(stderr.contains("5 bytes at the end"), "{stderr}");
}
