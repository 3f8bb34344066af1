#!/usr/bin/env python3
"""Hostile peers against a running `remora serve` on 127.0.0.1 (issue 11's defects 1-6).

Usage: hostile.py SCENARIO PORT SERVER_PID
Every scenario is bounded in time and count and prints one JSON line of figures.
"""
import json
import os
import socket
import struct
import sys
import threading
import time

MIB = 1024 * 1024
MAX_FRAME = 16 * MIB


def header(code=310, opaque=1, minimal=False):
    if minimal:
        return json.dumps({"code": code, "opaque": opaque}, separators=(",", ":")).encode()
    return json.dumps(
        {"code": code, "flag": 0, "language": "JAVA", "opaque": opaque,
         "serializeTypeCurrentRPC": "JSON", "version": 317},
        separators=(",", ":")).encode()


def frame(body=b"", opaque=1, minimal=False):
    h = header(opaque=opaque, minimal=minimal)
    return struct.pack(">II", 4 + len(h) + len(body), len(h)) + h + body


def read_frame(sock):
    """One frame's (code, opaque, body_len), or None at EOF."""
    prefix = recv_exact(sock, 4)
    if prefix is None:
        return None
    (length,) = struct.unpack(">I", prefix)
    rest = recv_exact(sock, length)
    if rest is None:
        return None
    hlen = struct.unpack(">I", rest[:4])[0] & 0xFFFFFF
    h = json.loads(rest[4:4 + hlen])
    return h.get("code"), h.get("opaque"), length - 4 - hlen


def recv_exact(sock, n):
    chunks = []
    while n > 0:
        c = sock.recv(min(n, 1 << 20))
        if not c:
            return None
        chunks.append(c)
        n -= len(c)
    return b"".join(chunks)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmSize", "VmHWM", "Threads"):
                out[k] = int(v.split()[0]) // 1024 if k != "Threads" else int(v.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def call(port, body=b"x" * 64, timeout=1.0):
    """One request on a fresh connection; (ok, seconds)."""
    t0 = time.monotonic()
    try:
        with connect(port, timeout) as s:
            s.settimeout(timeout)
            s.sendall(frame(body, opaque=7))
            got = read_frame(s)
            return got is not None and got[0] == 0, time.monotonic() - t0
    except OSError:
        return False, time.monotonic() - t0


def pctl(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def d1_lost_answer(port, pid):
    """Largest legal request whose echo is too big: how long until an answer arrives?"""
    h = header(minimal=True)
    body = b"b" * (MAX_FRAME - 8 - len(h))
    s = connect(port)
    s.sendall(frame(body, minimal=True))
    s.settimeout(3.0)
    t0 = time.monotonic()
    try:
        got = read_frame(s)
        return {"answered": got is not None, "code": got and got[0],
                "ms": round((time.monotonic() - t0) * 1000, 1)}
    except socket.timeout:
        return {"answered": False, "waited_ms": 3000}
    finally:
        s.close()


def flood(port, total, body_len, stop_after_blocked=2.0, deadline=20.0):
    """Sends `total` bytes of requests and never reads; returns bytes the server took."""
    s = connect(port)
    s.settimeout(stop_after_blocked)
    one = frame(b"f" * body_len)
    sent = 0
    end = time.monotonic() + deadline
    try:
        while sent < total and time.monotonic() < end:
            n = s.send(one)
            sent += n
            if n < len(one):
                s.sendall(one[n:])
                sent += len(one) - n
    except (socket.timeout, OSError):
        pass
    return s, sent


def d2_two_stallers(port, pid):
    """Two peers send ~19 MiB of 64 KiB requests and never read; do other clients' calls finish?"""
    socks = []
    threads = [threading.Thread(target=lambda: socks.append(flood(port, 19 * MIB, 64 * 1024)))
               for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    lat, ok = [], 0
    for _ in range(30):
        good, secs = call(port, timeout=1.0)
        ok += good
        lat.append(secs)
    for t in threads:
        t.join()
    for s, _ in socks:
        s.close()
    return {"other_calls_ok": ok, "of": 30, "p50_ms": round(pctl(lat, 0.5) * 1000, 1),
            "p99_ms": round(pctl(lat, 0.99) * 1000, 1)}


def d3_never_reads(port, pid):
    """One peer writes up to 188 MiB of requests and never reads: peak server RSS."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc_status(pid)["VmRSS"])
            time.sleep(0.05)
    base = proc_status(pid)["VmRSS"]
    t = threading.Thread(target=sample)
    t.start()
    s, sent = flood(port, 188 * MIB, 64 * 1024, stop_after_blocked=3.0, deadline=25.0)
    time.sleep(0.5)
    done.set()
    t.join()
    after = proc_status(pid)
    s.close()
    return {"sent_mib": round(sent / MIB, 1), "rss_base_mib": base, "rss_peak_mib": peak[0],
            "rss_while_open_mib": after["VmRSS"]}


def d4_announced_lengths(port, pid):
    """500 peers announce 16 MiB frames and stall; then 15 rounds of big partial frames."""
    base = proc_status(pid)
    socks = []
    prefix = struct.pack(">II", MAX_FRAME - 4, len(header()))
    for _ in range(500):
        s = connect(port)
        s.sendall(prefix)
        socks.append(s)
    time.sleep(1.0)
    stalled = proc_status(pid)
    for s in socks:
        s.close()
    socks.clear()
    for _ in range(15):
        group = []
        for _ in range(4):
            s = connect(port)
            s.sendall(frame(b"p" * (12 * MIB))[: 12 * MIB])
            group.append(s)
        time.sleep(0.2)
        for s in group:
            s.close()
    time.sleep(1.5)
    idle = proc_status(pid)
    return {"base_vsz_mib": base["VmSize"], "stalled_500_vsz_mib": stalled["VmSize"],
            "stalled_500_rss_mib": stalled["VmRSS"], "after_rounds_idle_rss_mib": idle["VmRSS"],
            "base_rss_mib": base["VmRSS"]}


def d5_half_close(port, pid):
    """100 x: a request, then shutdown(SHUT_WR): how many are answered?"""
    answered = 0
    for i in range(100):
        try:
            with connect(port, 2.0) as s:
                s.settimeout(2.0)
                s.sendall(frame(b"h" * 32, opaque=i))
                s.shutdown(socket.SHUT_WR)
                got = read_frame(s)
                answered += got is not None and got[1] == i
        except OSError:
            pass
    return {"answered": answered, "of": 100}


def d6_connection_flood(port, pid):
    """2,000 concurrent connects, one request each: time until all are answered; then fds."""
    import selectors
    base_fds = proc_status(pid)["fds"]
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    pending = {}
    for i in range(2000):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        pending[s] = bytearray()
        sel.register(s, selectors.EVENT_WRITE, i)
    answered = 0
    end = t0 + 30.0
    while pending and time.monotonic() < end:
        for key, ev in sel.select(timeout=0.5):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE:
                try:
                    s.send(frame(b"c" * 16, opaque=key.data))
                    sel.modify(s, selectors.EVENT_READ, key.data)
                except OSError:
                    sel.unregister(s)
                    s.close()
                    pending.pop(s)
            else:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                buf = pending[s]
                buf += data
                if not data or (len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]):
                    answered += bool(data)
                    sel.unregister(s)
                    s.close()
                    pending.pop(s)
    secs = time.monotonic() - t0
    for s in list(pending):
        s.close()
    peak_fds = proc_status(pid)["fds"]
    time.sleep(1.0)
    after = proc_status(pid)["fds"]
    return {"answered": answered, "of": 2000, "seconds": round(secs, 2), "base_fds": base_fds,
            "fds_1s_after_close": after, "fds_at_end": peak_fds}


def main():
    scenario, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fn = {"d1": d1_lost_answer, "d2": d2_two_stallers, "d3": d3_never_reads,
          "d4": d4_announced_lengths, "d5": d5_half_close, "d6": d6_connection_flood}[scenario]
    out = fn(port, pid)
    out["scenario"] = scenario
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
