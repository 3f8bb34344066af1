#!/usr/bin/env python3
"""Regenerates the seed corpora (fuzz/corpus/<target>/seed-*) from the test vectors.

Usage: python3 fuzz/seeds.py   (from anywhere; writes next to this script)

- frame_decoder: every valid frame in remoting-vectors.json but the 64 KiB ones, every frame in
  invalid-frames.json, and one stream of two frames back to back.
- json_header / binary_header: the header (bytes 8 .. 8 + (u32 at 4..8 & 0xFFFFFF), clamped to
  the frame) of each frame whose marker says JSON (0) / ROCKETMQ (1), plus a few JSON dialects
  peers are known to send.
Seeds the fuzzer found (seed-found-*) are not touched. The `connection` target's seeds are not
made here: they are op lists in tests/connection_seeds.rs
(`REMORA_FUZZ_WRITE_SEEDS=1 cargo test --test connection_seeds` rewrites them).
"""
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "tests", "fixtures", "vectors")
TARGETS = ("frame_decoder", "json_header", "binary_header")

JSON_DIALECTS = {
    "go-struct-order": b'{"code":105,"language":"GO","version":317,"opaque":7,"flag":0,"remark":"","extFields":{"topic":"t"}}',
    "cpp-trailing-ws-unknown-keys": b'{"code":1,"language":3,"x":[1,{"y":[true,false,null,-1.5e3]}],"z":"\\u00e9"}\n\r\t ',
    "empty-object": b"{}",
    "lenient-quoted-null-scalars": b'{"code":"12","flag":null,"remark":null,"extFields":{"a":1,"b":true,"c":null}}',
    "escapes-surrogates-raw-controls": b'{"remark":"\\ud83d\\ude80 \\" \\/ \\b\\f\\n\\r\\t \x01\x02"}',
    "escaped-key": b'{"c\\u006fde":5}',
    "duplicate-keys": b'{"code":1,"code":2,"extFields":{"k":"a","k":"b"},"extFields":{"k":"c","k":"d"}}',
    "unknown-language-name": b'{"language":"COBOL","version":-1,"opaque":-2147483648,"flag":2147483647}',
}


def header(frame):
    if len(frame) < 8:
        return None
    hl = int.from_bytes(frame[4:8], "big") & 0xFFFFFF
    return frame[4], frame[8:8 + hl]


def safe(name):
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + safe(name)), "wb") as f:
        f.write(data)


def main():
    for t in TARGETS:
        d = os.path.join(HERE, "corpus", t)
        if os.path.isdir(d):
            for f in os.listdir(d):
                if f.startswith("seed-") and not f.startswith("seed-found-"):
                    os.remove(os.path.join(d, f))

    valid = json.load(open(os.path.join(VECTORS, "remoting-vectors.json")))["vectors"]
    invalid = json.load(open(os.path.join(VECTORS, "invalid-frames.json")))["frames"]
    frames = [(v["name"], bytes.fromhex(v["hex"])) for v in valid]
    frames += [("invalid-" + v["name"], bytes.fromhex(v["hex"])) for v in invalid]
    frames = [(n, f) for n, f in frames if len(f) <= 32 * 1024]

    by_name = dict(frames)
    for name, frame in frames:
        write("frame_decoder", name, frame)
        h = header(frame)
        if h is None:
            continue
        ty, hdr = h
        if ty == 0:
            write("json_header", name, hdr)
        elif ty == 1:
            write("binary_header", name, hdr)
    write(
        "frame_decoder",
        "stream-json-then-rocketmq",
        by_name["ext-one-field-json"] + by_name["ext-one-field-rocketmq"] + b"\x00\x00",
    )
    for name, text in JSON_DIALECTS.items():
        write("json_header", "dialect-" + name, text)


if __name__ == "__main__":
    main()
