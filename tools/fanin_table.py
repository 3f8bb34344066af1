#!/usr/bin/env python3
"""fanin_table.py CPU.jsonl [TARGET.jsonl]: the markdown tables of benches/README.md's fan-in
section from fanin_cpu.sh and fanin_target.sh output (repetitions of a row joined with ' / ';
ratios are taken within a repetition, i.e. between runs made minutes apart)."""
import json, sys
from collections import defaultdict


def load(path, key):
    rows = defaultdict(list)
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        rows[key(d)].append(d)
    return rows


def k(x):
    return ("%.0fk" if x >= 100000 else "%.1fk") % (x / 1000)


def rps(xs):
    return " / ".join(k(d["rps"]) for d in xs) or "–"


def cpu(xs, field="cpu_us_per_req"):
    return " / ".join("%.1f" % d[field] for d in xs if field in d) or "–"


def ratio(a, b):
    return " / ".join("%.2f" % (x["rps"] / y["rps"]) for x, y in zip(a, b) if y["rps"]) or "–"


def nobuf(xs):
    out = []
    for d in xs:
        lp = d.get("loop")
        if lp:
            out.append("%.2f" % (lp["receives_without_buffer"] / max(lp["receives"], 1)))
    return " / ".join(out) or "–"


def name(ser):
    return "JSON" if ser == "json" else "ROCKETMQ"


def threads(d):
    return "%d/%d" % (d.get("client_threads", 1), d.get("server_threads", 1))


c_rows = load(sys.argv[1], lambda d: (d["ser"], d["connections"], d["inflight"], d["mode"], d["bin"], threads(d)))
shapes = sorted({(key[0], key[1], key[2], key[5]) for key in c_rows},
                key=lambda s: (s[0] != "rocketmq", s[3], s[1] * 1000 - s[2]))
print("| header | threads c/s | conns × in flight | rpc before | rpc after | after / before | raw (same loop) | rpc/raw | CPU µs/req rpc before | rpc after | raw |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for ser, c, n, th in shapes:
    g = lambda m, b: c_rows.get((ser, c, n, m, b, th), [])
    br, ar, aw = g("rpc", "before"), g("rpc", "after"), g("raw", "after")
    if not (ar and aw):
        continue
    print("| %s | %s | %s × %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        name(ser), th, format(c, ","), n, rps(br), rps(ar), ratio(ar, br), rps(aw),
        ratio(ar, aw), cpu(br), cpu(ar), cpu(aw)))
if len(sys.argv) > 2:
    t = load(sys.argv[2], lambda d: (d["ser"], d["connections"], d["server"], d["bin"]))
    print()
    print("| header | conns × 1 | rpc before | rpc after | raw (same loop) | epoll echo | rpc/raw | rpc/epoll | CPU µs/req client+server, whole run: rpc before | rpc after | in the window: rpc after | raw | epoll | receives without a buffer per receive (client) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ser in ["rocketmq", "json"]:
        for c in sorted({key[1] for key in t if key[0] == ser}):
            g = lambda s, b: t.get((ser, c, s, b), [])
            br, ar, aw, ae = g("remora-serve", "before"), g("remora-serve", "after"), g("uring-echo", "after"), g("epoll-echo", "after")
            if not ar:
                continue
            print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name(ser), format(c, ","), rps(br), rps(ar), rps(aw), rps(ae), ratio(ar, aw),
                ratio(ar, ae), cpu(br, "total_cpu_us_per_req"), cpu(ar, "total_cpu_us_per_req"),
                cpu(ar, "window_cpu_us_per_req"), cpu(aw, "window_cpu_us_per_req"),
                cpu(ae, "window_cpu_us_per_req"), nobuf(ar)))
    # 10,000 × 1 against 1,000 × 1, repetition by repetition.
    print()
    print("| header | 10,000 × 1 / 1,000 × 1 | rpc before | rpc after | raw (same loop) | epoll echo |")
    print("|---|---|---:|---:|---:|---:|")
    for ser in ["rocketmq", "json"]:
        cells = []
        for s, b in [("remora-serve", "before"), ("remora-serve", "after"), ("uring-echo", "after"), ("epoll-echo", "after")]:
            cells.append(ratio(t.get((ser, 10000, s, b), []), t.get((ser, 1000, s, b), [])))
        print("| %s | rps | %s |" % (name(ser), " | ".join(cells)))
