//! `remora decode --pcap FILE`: the remoting frames in a tcpdump capture.
//!
//! The capture is read with `pcap-parser` (pcap, microsecond or nanosecond, either byte order;
//! pcapng) and each packet's link, IP and TCP headers with `etherparse`. Link types: Ethernet,
//! BSD loopback (`NULL`, `LOOP`), Linux cooked (`SLL`, `SLL2`) and raw IP; IPv4 and IPv6.
//!
//! Each TCP direction is reassembled by sequence number: retransmitted bytes are dropped,
//! segments that arrive early wait for the gap before them, and a gap that is never filled (lost
//! by the capture) is skipped. A direction whose first byte is not known to start a frame (no SYN
//! seen, or after a gap) is resynchronised on the next plausible frame — a prefix whose lengths
//! fit and whose frame decodes — and the bytes skipped are reported on stderr. Frames are printed
//! in capture order: when the packet that completes them was captured.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_parser::pcapng::Block;
use pcap_parser::{PcapBlockOwned, PcapError};
use remora_core::{Codec, Command, Limits, PREFIX_LEN};
use serde_json::{Map, Value};

use crate::view;

/// Most out-of-order bytes held per direction before the gap in front of them is given up on.
const MAX_PENDING: usize = 32 * 1024 * 1024;

/// One TCP segment from the capture.
#[derive(Clone, Debug)]
pub struct Segment<'a> {
    /// Capture time, seconds since the epoch.
    pub ts: f64,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// SYN flag.
    pub syn: bool,
    /// The acknowledgement number, when the ACK flag is set.
    pub ack: Option<u32>,
    /// The TCP payload.
    pub payload: &'a [u8],
}

/// What the decoder found.
#[derive(Debug)]
pub enum Found {
    /// A frame, with the time, sender and receiver of the packet that completed it.
    Frame {
        /// Capture time.
        ts: f64,
        /// Sender.
        src: SocketAddr,
        /// Receiver.
        dst: SocketAddr,
        /// The frame.
        cmd: Box<Command>,
    },
    /// Something said on stderr (a resynchronisation, a gap, leftovers).
    Note(String),
}

/// Reassembles one direction's byte stream.
#[derive(Debug, Default)]
struct Stream {
    /// The sequence number of the next byte expected (`None` before the first segment).
    next_seq: Option<u32>,
    /// Stream offset of the next byte expected.
    next_off: u64,
    /// Segments that arrived before the bytes in front of them, by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    /// The SYN's sequence number, when the stream began with one.
    isn: Option<u32>,
}

/// What a segment delivered in order: bytes, and the gaps skipped before each piece.
#[derive(Debug, Default, PartialEq)]
struct Delivered {
    /// `(bytes missing before this piece, the piece)`.
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Stream {
    /// Takes a segment; returns the bytes that are now in order. `clean` reports whether the
    /// stream is known to start at its first byte (a SYN was seen).
    fn push(&mut self, seq: u32, syn: bool, payload: &[u8]) -> (Delivered, Option<bool>) {
        let mut started = None;
        let next_seq = match self.next_seq {
            Some(s) => s,
            None if syn => {
                self.isn = Some(seq);
                self.next_seq = Some(seq.wrapping_add(1));
                started = Some(true);
                seq.wrapping_add(1)
            }
            None if payload.is_empty() => return (Delivered::default(), None),
            None => {
                self.next_seq = Some(seq);
                started = Some(false);
                seq
            }
        };
        let mut out = Delivered::default();
        if syn || payload.is_empty() {
            return (out, started);
        }
        let diff = i64::from(seq.wrapping_sub(next_seq) as i32);
        let start = self.next_off as i64 + diff;
        let end = start + payload.len() as i64;
        if end <= self.next_off as i64 {
            return (out, started); // a retransmission of bytes already delivered
        }
        if start > self.next_off as i64 {
            let entry = self.pending.entry(start as u64).or_default();
            if payload.len() > entry.len() {
                self.pending_bytes += payload.len() - entry.len();
                *entry = payload.to_vec();
            }
            if self.pending_bytes > MAX_PENDING {
                self.skip_gap(&mut out);
            }
        } else {
            let skip = (self.next_off as i64 - start) as usize;
            self.deliver(&payload[skip..], 0, &mut out);
        }
        self.drain(&mut out);
        (out, started)
    }

    fn deliver(&mut self, bytes: &[u8], missing: u64, out: &mut Delivered) {
        self.next_off += bytes.len() as u64;
        if let Some(s) = self.next_seq.as_mut() {
            *s = s
                .wrapping_add(bytes.len() as u32)
                .wrapping_add(missing as u32);
        }
        out.pieces.push((missing, bytes.to_vec()));
    }

    /// Delivers the pending segments that are now in order.
    fn drain(&mut self, out: &mut Delivered) {
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if start > self.next_off {
                return;
            }
            let bytes = entry.remove();
            self.pending_bytes -= bytes.len();
            let end = start + bytes.len() as u64;
            if end > self.next_off {
                let skip = (self.next_off - start) as usize;
                self.deliver(&bytes[skip..], 0, out);
            }
        }
    }

    /// Gives up on the gap before the first pending segment.
    fn skip_gap(&mut self, out: &mut Delivered) {
        if let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            let bytes = entry.remove();
            self.pending_bytes -= bytes.len();
            let missing = start - self.next_off;
            self.next_off = start;
            self.deliver(&bytes, missing, out);
            // `deliver` advanced next_seq by the piece and the gap.
            self.drain(out);
        }
    }

    /// The peer acknowledged every byte before sequence number `ack`: gaps before that were
    /// lost by the capture, not by the network, and will not be filled; skip them now.
    fn acked(&mut self, ack: u32) -> Delivered {
        let mut out = Delivered::default();
        let Some(next_seq) = self.next_seq else {
            return out;
        };
        let ahead = i64::from(ack.wrapping_sub(next_seq) as i32);
        if ahead <= 0 {
            return out;
        }
        let acked_off = self.next_off + ahead as u64;
        while self
            .pending
            .first_key_value()
            .is_some_and(|(&start, _)| start < acked_off)
        {
            self.skip_gap(&mut out);
        }
        out
    }

    /// At the end of the capture: skips every gap left.
    fn finish(&mut self) -> Delivered {
        let mut out = Delivered::default();
        while !self.pending.is_empty() {
            self.skip_gap(&mut out);
        }
        out
    }
}

/// Cuts one direction's bytes into frames, resynchronising when the start is unknown.
#[derive(Debug)]
struct Frames {
    buf: BytesMut,
    synced: bool,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// Bytes skipped while looking for a frame, not yet reported.
    skipped: u64,
    /// While unsynced: offsets before this were looked at.
    scanned: usize,
    /// While unsynced: offsets (before `scanned`) whose prefix fits but whose frame has not all
    /// arrived, in order.
    candidates: Vec<usize>,
}

impl Frames {
    fn new() -> Self {
        Frames {
            buf: BytesMut::new(),
            synced: false,
            offset: 0,
            skipped: 0,
            scanned: 0,
            candidates: Vec::new(),
        }
    }

    /// Forgets what the search for a frame start had looked at (the buffer changed under it).
    fn reset_scan(&mut self) {
        self.scanned = 0;
        self.candidates.clear();
    }

    /// Whether a plausible frame starts at `at`: `Some(true)` it decodes, `Some(false)` its
    /// prefix fits but the frame is not all here yet, `None` not a frame.
    fn plausible(&self, codec: &Codec, limits: &Limits, at: usize) -> Option<bool> {
        let b = &self.buf[at..];
        let prefix = b.get(..PREFIX_LEN)?;
        let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let frame_len = (length as usize).checked_add(4)?;
        if length > limits.max_frame_len.saturating_sub(4) || (length as i32) < 0 {
            return None;
        }
        let header_len =
            usize::from(prefix[5]) << 16 | usize::from(prefix[6]) << 8 | usize::from(prefix[7]);
        let min_header = match prefix[4] {
            0 => 2,  // JSON: at least "{}"
            1 => 21, // ROCKETMQ: the fixed fields
            _ => return None,
        };
        if header_len < min_header || header_len + 4 > length as usize {
            return None;
        }
        if prefix[4] == 0 && b.get(PREFIX_LEN).is_some_and(|&c| c != b'{') {
            return None;
        }
        if b.len() < frame_len {
            return Some(false);
        }
        let cmd = codec
            .decode_frame(&Bytes::copy_from_slice(&b[..frame_len]))
            .ok()?;
        // Flags other than response and oneway do not occur.
        (cmd.flag & !3 == 0).then_some(true)
    }

    /// The next frame, or what was skipped to find it. `eof`: no more bytes will come.
    fn next(
        &mut self,
        codec: &Codec,
        limits: &Limits,
        eof: bool,
        notes: &mut Vec<String>,
    ) -> Option<Command> {
        if !self.synced {
            // The first offset where a whole plausible frame decodes; an offset whose prefix
            // fits but whose frame has not all arrived is waited for (a whole frame further on
            // is preferred to it). An offset found implausible stays so, so each byte is
            // scanned once: only the waiting candidates and the new bytes are looked at again.
            let mut found = None;
            let mut waiting = Vec::new();
            for &at in &self.candidates {
                match self.plausible(codec, limits, at) {
                    Some(true) => {
                        found = Some(at);
                        break;
                    }
                    Some(false) => waiting.push(at),
                    None => {}
                }
            }
            if found.is_none() {
                let end = (self.buf.len() + 1).saturating_sub(PREFIX_LEN);
                for at in self.scanned..end {
                    match self.plausible(codec, limits, at) {
                        Some(true) => {
                            found = Some(at);
                            break;
                        }
                        Some(false) => waiting.push(at),
                        None => {}
                    }
                }
                self.scanned = self.scanned.max(end);
            }
            let skip = match found {
                Some(at) => at,
                // Nothing before the first candidate can start a frame.
                None if !waiting.is_empty() && !eof => waiting[0],
                // Keep the tail that may still begin a frame.
                None if !eof => self.buf.len().saturating_sub(PREFIX_LEN - 1),
                None => self.buf.len(),
            };
            self.candidates = waiting
                .into_iter()
                .filter(|&at| at >= skip)
                .map(|at| at - skip)
                .collect();
            self.scanned = self.scanned.saturating_sub(skip);
            if skip > 0 {
                let _ = self.buf.split_to(skip);
                self.skipped += skip as u64;
                self.offset += skip as u64;
            }
            if found.is_some() {
                self.synced = true;
                self.reset_scan();
                if self.skipped > 0 {
                    notes.push(format!(
                        "skipped {} bytes before stream offset {} and resynchronised on the next plausible frame",
                        self.skipped, self.offset
                    ));
                    self.skipped = 0;
                }
            } else {
                if eof && self.skipped > 0 {
                    notes.push(format!(
                        "skipped {} bytes before the end of the stream: no plausible frame in them",
                        self.skipped
                    ));
                    self.skipped = 0;
                }
                return None;
            }
        }
        let before = self.buf.len();
        match codec.decode(&mut self.buf) {
            Ok(remora_core::Decoded::Command(cmd)) => {
                self.offset += (before - self.buf.len()) as u64;
                Some(cmd)
            }
            Ok(remora_core::Decoded::Incomplete { .. }) => None,
            Err(e) => {
                notes.push(format!(
                    "corrupt frame at stream offset {}: {e}; resynchronising",
                    self.offset
                ));
                self.synced = false;
                let _ = self.buf.split_to(1);
                self.offset += 1;
                self.next(codec, limits, eof, notes)
            }
        }
    }
}

struct Direction {
    stream: Stream,
    frames: Frames,
    last_ts: f64,
}

/// The whole capture's TCP directions.
pub struct Decoder {
    codec: Codec,
    limits: Limits,
    directions: HashMap<(SocketAddr, SocketAddr), Direction>,
    /// Directions in the order they were first seen (so the end-of-capture notes are stable).
    order: Vec<(SocketAddr, SocketAddr)>,
}

impl Decoder {
    /// A decoder with these frame limits.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            codec: Codec::new(limits),
            limits,
            directions: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// Takes one segment; what it completed.
    pub fn segment(&mut self, seg: &Segment<'_>) -> Vec<Found> {
        let mut found = Vec::new();
        if let Some(ack) = seg.ack {
            if let Some(rev) = self.directions.get_mut(&(seg.dst, seg.src)) {
                let delivered = rev.stream.acked(ack);
                if !delivered.pieces.is_empty() {
                    let rev_seg = Segment {
                        ts: seg.ts,
                        src: seg.dst,
                        dst: seg.src,
                        seq: 0,
                        syn: false,
                        ack: None,
                        payload: &[],
                    };
                    let mut notes = Vec::new();
                    Self::take(
                        &self.codec,
                        &self.limits,
                        rev,
                        delivered,
                        false,
                        &rev_seg,
                        &mut notes,
                        &mut found,
                    );
                }
            }
        }
        let key = (seg.src, seg.dst);
        // A SYN with another initial sequence number on a direction already seen: the 4-tuple
        // was reused by a new connection. The old one ends here.
        let reused = seg.syn
            && self
                .directions
                .get(&key)
                .is_some_and(|d| d.stream.next_seq.is_some() && d.stream.isn != Some(seg.seq));
        if reused {
            if let Some(mut old) = self.directions.remove(&key) {
                let delivered = old.stream.finish();
                let mut notes = vec!["a new connection reuses these addresses".to_string()];
                Self::take(
                    &self.codec,
                    &self.limits,
                    &mut old,
                    delivered,
                    true,
                    seg,
                    &mut notes,
                    &mut found,
                );
            }
        }
        let dir = self.directions.entry(key).or_insert_with(|| {
            if !reused {
                self.order.push(key); // a reused direction keeps its place
            }
            Direction {
                stream: Stream::default(),
                frames: Frames::new(),
                last_ts: seg.ts,
            }
        });
        dir.last_ts = seg.ts;
        let (delivered, started) = dir.stream.push(seg.seq, seg.syn, seg.payload);
        let mut notes = Vec::new();
        if started == Some(true) {
            dir.frames.synced = true; // a SYN: the stream starts with a frame
        } else if started == Some(false) {
            notes.push("capture began after the connection opened (no SYN seen)".to_string());
        }
        Self::take(
            &self.codec,
            &self.limits,
            dir,
            delivered,
            false,
            seg,
            &mut notes,
            &mut found,
        );
        found
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        codec: &Codec,
        limits: &Limits,
        dir: &mut Direction,
        delivered: Delivered,
        eof: bool,
        seg: &Segment<'_>,
        notes: &mut Vec<String>,
        found: &mut Vec<Found>,
    ) {
        let prefix = format!("{} -> {}: ", seg.src, seg.dst);
        let flush = |notes: &mut Vec<String>, found: &mut Vec<Found>| {
            for n in notes.drain(..) {
                found.push(Found::Note(format!("{prefix}{n}")));
            }
        };
        for (missing, bytes) in delivered.pieces {
            if missing > 0 {
                // Frames cannot be trusted across a hole: drop what was buffered and resync.
                notes.push(format!(
                    "{missing} bytes missing from the capture at stream offset {}; {} buffered bytes dropped, resynchronising",
                    dir.frames.offset + dir.frames.buf.len() as u64,
                    dir.frames.buf.len()
                ));
                dir.frames.offset += dir.frames.buf.len() as u64 + missing;
                dir.frames.buf.clear();
                dir.frames.synced = false;
                dir.frames.reset_scan();
            }
            dir.frames.buf.extend_from_slice(&bytes);
            while let Some(cmd) = dir.frames.next(codec, limits, false, notes) {
                flush(notes, found);
                found.push(Found::Frame {
                    ts: seg.ts,
                    src: seg.src,
                    dst: seg.dst,
                    cmd: Box::new(cmd),
                });
            }
            flush(notes, found);
        }
        if eof {
            while let Some(cmd) = dir.frames.next(codec, limits, true, notes) {
                flush(notes, found);
                found.push(Found::Frame {
                    ts: seg.ts,
                    src: seg.src,
                    dst: seg.dst,
                    cmd: Box::new(cmd),
                });
            }
            if !dir.frames.buf.is_empty() {
                notes.push(format!(
                    "{} bytes at the end of the stream do not complete a frame",
                    dir.frames.buf.len()
                ));
            }
        }
        flush(notes, found);
    }

    /// The end of the capture: fills no more gaps, decodes what is left, reports leftovers.
    pub fn finish(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        for key in self.order.clone() {
            let Some(dir) = self.directions.get_mut(&key) else {
                continue;
            };
            let delivered = dir.stream.finish();
            let seg = Segment {
                ts: dir.last_ts,
                src: key.0,
                dst: key.1,
                seq: 0,
                syn: false,
                ack: None,
                payload: &[],
            };
            let mut notes = Vec::new();
            Self::take(
                &self.codec,
                &self.limits,
                dir,
                delivered,
                true,
                &seg,
                &mut notes,
                &mut found,
            );
        }
        found
    }
}

/// The JSON line for a frame: `ts`, `src`, `dst`, then the `decode` keys.
pub fn frame_json(ts: f64, src: SocketAddr, dst: SocketAddr, cmd: &Command) -> Value {
    let mut obj = Map::new();
    obj.insert("ts".into(), Value::from(ts));
    obj.insert("src".into(), Value::from(src.to_string()));
    obj.insert("dst".into(), Value::from(dst.to_string()));
    if let Value::Object(rest) = view::to_json(cmd) {
        obj.extend(rest);
    }
    Value::Object(obj)
}

/// The link types read.
fn ip_payload(linktype: i32, data: &[u8]) -> Result<SlicedPacket<'_>, String> {
    fn ip(d: &[u8]) -> Result<SlicedPacket<'_>, String> {
        SlicedPacket::from_ip(d).map_err(|e| e.to_string())
    }
    match linktype {
        // Ethernet.
        1 => SlicedPacket::from_ethernet(data).map_err(|e| e.to_string()),
        // BSD loopback: a 4-byte address family in the capturing host's order (NULL) or in
        // network order (LOOP); the IP version byte tells IPv4 from IPv6 either way.
        0 | 108 => ip(data.get(4..).ok_or("truncated loopback header")?),
        // Raw IP (101; 12 and 14 on some systems), IPv4 (228), IPv6 (229).
        101 | 12 | 14 | 228 | 229 => ip(data),
        // Linux cooked v1: 16-byte header, protocol (an EtherType) at 14.
        113 => {
            let proto = data.get(14..16).ok_or("truncated SLL header")?;
            match u16::from_be_bytes([proto[0], proto[1]]) {
                0x0800 | 0x86dd => ip(&data[16..]),
                other => Err(format!("not IP (protocol {other:#06x})")),
            }
        }
        // Linux cooked v2: 20-byte header, protocol at 0.
        276 => {
            let proto = data.get(0..2).ok_or("truncated SLL2 header")?;
            match u16::from_be_bytes([proto[0], proto[1]]) {
                0x0800 | 0x86dd => ip(data.get(20..).ok_or("truncated SLL2 header")?),
                other => Err(format!("not IP (protocol {other:#06x})")),
            }
        }
        other => Err(format!("link type {other} is not supported")),
    }
}

/// The TCP segment in a packet, if it carries one.
fn segment(linktype: i32, ts: f64, data: &[u8]) -> Result<Option<Segment<'_>>, String> {
    let packet = ip_payload(linktype, data)?;
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match &packet.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        _ => return Ok(None),
    };
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return Ok(None);
    };
    Ok(Some(Segment {
        ts,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        payload: tcp.payload(),
    }))
}

struct Interface {
    linktype: i32,
    resolution: u64,
    offset: i64,
}

/// Reads the capture at `path` and prints its frames; notes go to stderr. A capture that cannot
/// be read, or ends inside a block, is an error (after the frames before it are printed).
pub fn decode_file(path: &Path, max_frame_len: u32) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut decoder = Decoder::new(Limits {
        max_frame_len,
        ..Limits::default()
    });
    let mut out = std::io::stdout().lock();
    let mut frames = 0usize;
    let mut emit = |found: Vec<Found>| -> Result<(), String> {
        for f in found {
            match f {
                Found::Frame { ts, src, dst, cmd } => {
                    frames += 1;
                    writeln!(out, "{}", frame_json(ts, src, dst, &cmd))
                        .map_err(|e| e.to_string())?;
                }
                Found::Note(n) => eprintln!("{n}"),
            }
        }
        Ok(())
    };
    let read = read_capture(file, |seg| emit(decoder.segment(&seg)));
    emit(decoder.finish())?;
    read.map_err(|e| format!("{}: {e}", path.display()))?;
    if frames == 0 {
        eprintln!("{}: no remoting frames found", path.display());
    }
    Ok(())
}

/// Calls `each` with every TCP segment of the capture, in capture order.
pub fn read_capture(
    file: impl std::io::Read + Send,
    mut each: impl FnMut(Segment<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut reader = pcap_parser::create_reader(1 << 20, file).map_err(|e| match e {
        PcapError::Eof => "empty file: not a capture".to_string(),
        PcapError::HeaderNotRecognized => "not a pcap or pcapng capture".to_string(),
        PcapError::Incomplete(_) | PcapError::UnexpectedEof => {
            "truncated capture: the file header is incomplete".to_string()
        }
        e => format!("unreadable capture: {e}"),
    })?;
    let mut legacy: Option<(i32, bool)> = None; // link type, nanosecond timestamps
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut packets = 0u64;
    let mut stalls = 0;
    loop {
        let (consumed, result) = match reader.next() {
            Ok((offset, block)) => {
                stalls = 0;
                let r = match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy = Some((h.network.0, h.is_nanosecond_precision()));
                        Ok(())
                    }
                    PcapBlockOwned::Legacy(b) => {
                        packets += 1;
                        let (linktype, nanos) = legacy.unwrap_or((1, false));
                        let frac = if nanos { 1e-9 } else { 1e-6 };
                        let ts = f64::from(b.ts_sec) + f64::from(b.ts_usec) * frac;
                        packet(linktype, ts, b.data, packets, &mut each)
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        interfaces.clear();
                        Ok(())
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype.0,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset: idb.ts_offset(),
                        });
                        Ok(())
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        packets += 1;
                        match interfaces.get(epb.if_id as usize) {
                            None => Err(format!(
                                "packet {packets} names interface {} that was never described",
                                epb.if_id
                            )),
                            Some(i) => {
                                let raw = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                let ts = raw as f64 / i.resolution as f64 + i.offset as f64;
                                let data = epb.data.get(..epb.caplen as usize).unwrap_or(epb.data);
                                packet(i.linktype, ts, data, packets, &mut each)
                            }
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        packets += 1;
                        let linktype = interfaces.first().map_or(1, |i| i.linktype);
                        let len = (spb.origlen as usize).min(spb.data.len());
                        packet(linktype, 0.0, &spb.data[..len], packets, &mut each)
                    }
                    PcapBlockOwned::NG(_) => Ok(()),
                };
                (offset, r)
            }
            Err(PcapError::Eof) => return Ok(()),
            Err(PcapError::Incomplete(_)) => {
                stalls += 1;
                if stalls > 3 {
                    return Err(format!(
                        "truncated capture: the file ends inside the block after packet {packets}"
                    ));
                }
                reader
                    .refill()
                    .map_err(|e| format!("reading the capture: {e}"))?;
                continue;
            }
            Err(PcapError::UnexpectedEof) => {
                return Err(format!(
                    "truncated capture: the file ends inside the block after packet {packets}"
                ))
            }
            Err(PcapError::BufferTooSmall) => {
                return Err(format!(
                    "corrupt capture: the block after packet {packets} claims more than 1 MiB"
                ))
            }
            Err(e) => {
                return Err(format!(
                    "corrupt capture: the block after packet {packets}: {e}"
                ))
            }
        };
        reader.consume(consumed);
        result?;
    }
}

fn packet(
    linktype: i32,
    ts: f64,
    data: &[u8],
    n: u64,
    each: &mut impl FnMut(Segment<'_>) -> Result<(), String>,
) -> Result<(), String> {
    match segment(linktype, ts, data) {
        Ok(Some(seg)) => each(seg),
        Ok(None) => Ok(()),
        Err(e) => {
            // A packet cut short by the snap length, or not IP: skip it; a gap it leaves in a
            // stream is reported where the stream is reassembled.
            eprintln!("packet {n}: skipped: {e}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_orders_segments_and_drops_retransmissions() {
        let mut s = Stream::default();
        let (d, started) = s.push(u32::MAX - 1, true, b"");
        assert_eq!((d, started), (Delivered::default(), Some(true)));
        // The sequence number wraps past zero inside the stream.
        let isn = u32::MAX; // first data byte
        let (d, _) = s.push(isn.wrapping_add(3), false, b"def");
        assert!(d.pieces.is_empty(), "early segment waits");
        let (d, _) = s.push(isn, false, b"abc");
        assert_eq!(d.pieces, [(0, b"abc".to_vec()), (0, b"def".to_vec())]);
        let (d, _) = s.push(isn.wrapping_add(1), false, b"bcdefg"); // overlaps, adds "g"
        assert_eq!(d.pieces, [(0, b"g".to_vec())]);
        let (d, _) = s.push(isn, false, b"abc"); // pure retransmission
        assert!(d.pieces.is_empty());
        // A gap the capture never fills is skipped at the end, and said how long it was.
        let (d, _) = s.push(isn.wrapping_add(10), false, b"k");
        assert!(d.pieces.is_empty());
        assert_eq!(s.finish().pieces, [(3, b"k".to_vec())]);
    }

    #[test]
    fn a_stream_seen_without_syn_starts_at_its_first_data() {
        let mut s = Stream::default();
        assert_eq!(
            s.push(1000, false, b"").1,
            None,
            "a bare ACK starts nothing"
        );
        let (d, started) = s.push(5000, false, b"xy");
        assert_eq!(started, Some(false));
        assert_eq!(d.pieces, [(0, b"xy".to_vec())]);
    }

    fn encoded(cmd: &Command) -> Vec<u8> {
        let mut out = BytesMut::new();
        Codec::default().encode(cmd, &mut out).unwrap();
        out.to_vec()
    }

    /// Feeds `stream` to an unsynced `Frames` in pieces of `step` bytes; the opaques found and
    /// the notes.
    fn frames_of(stream: &[u8], step: usize) -> (Vec<i32>, Vec<String>) {
        let (codec, limits) = (Codec::default(), Limits::default());
        let mut f = Frames::new();
        let (mut got, mut notes) = (Vec::new(), Vec::new());
        for piece in stream.chunks(step) {
            f.buf.extend_from_slice(piece);
            while let Some(cmd) = f.next(&codec, &limits, false, &mut notes) {
                got.push(cmd.opaque);
            }
        }
        while let Some(cmd) = f.next(&codec, &limits, true, &mut notes) {
            got.push(cmd.opaque);
        }
        (got, notes)
    }

    #[test]
    fn resync_finds_the_same_frames_whatever_the_pieces() {
        // Junk, then something that looks like the start of a 1 MiB JSON frame, then real
        // frames: the whole frames further on win over the candidate that never completes.
        let mut stream = b"garbage bytes \x01\x02".to_vec();
        stream.extend_from_slice(&[0, 16, 0, 0, 0, 0, 0, 2, b'{', b'}']);
        for opaque in 1..=3 {
            stream.extend(encoded(
                &Command::request(10).with_opaque(opaque).with_body("body"),
            ));
        }
        let whole = frames_of(&stream, stream.len());
        assert_eq!(whole.0, [1, 2, 3]);
        assert!(whole.1[0].contains("resynchronised"), "{:?}", whole.1);
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(frames_of(&stream, step).0, whole.0, "pieces of {step}");
        }
    }

    #[test]
    fn a_stream_with_no_frame_is_skipped_and_said_so() {
        let (got, notes) = frames_of(&[0x55; 1000], 10);
        assert!(got.is_empty());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("skipped 1000 bytes"), "{notes:?}");
    }
}
