#!/usr/bin/env python3
"""fanin_table.py CPU.jsonl [TARGET.jsonl]: the markdown tables of benches/README.md's fan-in
section from fanin_cpu.sh and fanin_target.sh output (repetitions of a row joined with ' / ')."""
import json, sys
from collections import defaultdict


def load(path):
    rows = defaultdict(list)
    for line in open(path):
        d = json.loads(line)
        rows[(d["ser"], d["connections"], d["inflight"], d["mode"], d["bin"])].append(d)
    return rows


def rps(xs):
    return " / ".join(("%.0fk" if d["rps"] >= 100000 else "%.1fk") % (d["rps"] / 1000) for d in xs)


def cpu(xs):
    return " / ".join("%.1f" % d["cpu_us_per_req"] for d in xs)


def ratio(a, b):
    return " / ".join("%.2f" % (x["rps"] / y["rps"]) for x, y in zip(a, b))


def name(ser):
    return "JSON" if ser == "json" else "ROCKETMQ"


c_rows = load(sys.argv[1])
print("| header | conns × in flight | rpc before | rpc after | after / before | raw | rpc/raw before | rpc/raw after | CPU µs/req rpc before | after | raw |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for ser in ["rocketmq", "json"]:
    for c, n in [(1, 128), (16, 8), (128, 1), (1000, 1), (4000, 1)]:
        g = lambda m, b: c_rows.get((ser, c, n, m, b), [])
        br, ar, bw, aw = g("rpc", "before"), g("rpc", "after"), g("raw", "before"), g("raw", "after")
        if not (br and ar and bw and aw):
            continue
        print("| %s | %s × %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name(ser), format(c, ","), n, rps(br), rps(ar), ratio(ar, br), rps(aw),
            ratio(br, bw), ratio(ar, aw), cpu(br), cpu(ar), cpu(aw)))
if len(sys.argv) > 2:
    t = load(sys.argv[2])
    print()
    print("| header | conns × 1 | rpc before | rpc after | epoll echo (raw) | rpc after / epoll echo | CPU µs/req rpc before | after | raw |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for ser in ["rocketmq", "json"]:
        for c in [1000, 10000]:
            g = lambda m, b: t.get((ser, c, 1, m, b), [])
            br, ar, aw = g("rpc", "before"), g("rpc", "after"), g("raw", "after")
            if not (br and ar and aw):
                continue
            print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name(ser), format(c, ","), rps(br), rps(ar), rps(aw), ratio(ar, aw),
                cpu(br), cpu(ar), cpu(aw)))
