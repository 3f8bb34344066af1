#!/usr/bin/env python3
"""Print Remora-vs-reference ratios from criterion's saved estimates.

Reads every ``target/criterion/**/new/estimates.json`` (and the ``benchmark.json`` beside it, for
the group and function names) and prints a Markdown table: one row per benchmark group, e.g.
``decode/json/4096``, with the ``remora`` and ``reference`` times and ``reference / remora``.

Usage: python3 benches/compare.py [--dir target/criterion] [--stat median|mean|slope]
                                  [--decode-goal 10] [--encode-goal 5]
Standard library only.
"""

import argparse
import json
import os
import re
import sys

SIZE_ORDER = {"0": 0, "128": 1, "4096": 2, "heartbeat": 3}


def find_criterion_dir(explicit):
    if explicit:
        return explicit
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(os.environ.get("CARGO_TARGET_DIR", ""), "criterion"),
        os.path.join(here, "..", "target", "criterion"),
        os.path.join("target", "criterion"),
    ):
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    sys.exit("no criterion output found; run `cargo bench -p remora-benches` first or pass --dir")


def load(root, stat):
    """{group_id: {function_id: nanoseconds}} for every benchmark with a `new` estimate."""
    groups = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "estimates.json")) as f:
            estimates = json.load(f)
        meta_path = os.path.join(dirpath, "benchmark.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            group, function = meta.get("group_id"), meta.get("function_id")
        else:  # Fall back on the directory layout: <group>/<function>/new.
            function_dir = os.path.dirname(dirpath)
            group = os.path.basename(os.path.dirname(function_dir))
            function = os.path.basename(function_dir)
        estimate = estimates.get(stat) or estimates.get("mean")
        if estimate is None or function is None:
            continue
        groups.setdefault(group, {})[function] = estimate["point_estimate"]
    return groups


def fmt_time(ns):
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns:.1f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f} µs"
    return f"{ns / 1_000_000:.2f} ms"


def sort_key(group):
    parts = group.split("/")
    size = parts[2] if len(parts) > 2 else ""
    return (parts[0], parts[1] if len(parts) > 1 else "", SIZE_ORDER.get(size, 99), group)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="criterion output directory (default: target/criterion)")
    parser.add_argument("--stat", default="median", choices=["median", "mean", "slope"])
    parser.add_argument("--decode-goal", type=float, default=10.0)
    parser.add_argument("--encode-goal", type=float, default=5.0)
    parser.add_argument("--filter", default="", help="regex the group id must match")
    args = parser.parse_args()

    root = find_criterion_dir(args.dir)
    groups = load(root, args.stat)
    pattern = re.compile(args.filter)
    rows = [g for g in sorted(groups, key=sort_key) if pattern.search(g)]
    if not rows:
        sys.exit(f"no benchmarks under {root}")

    print(f"Times: criterion `{args.stat}` point estimates from {root}\n")
    print("| benchmark | remora | reference | reference / remora | goal |")
    print("|---|---:|---:|---:|---|")
    missed = []
    for group in rows:
        times = groups[group]
        remora, reference = times.get("remora"), times.get("reference")
        ratio = reference / remora if remora and reference else None
        goal = args.decode_goal if group.startswith("decode") else args.encode_goal
        if ratio is None:
            verdict = ""
        elif ratio >= goal:
            verdict = f"≥{goal:g}× ✓"
        else:
            verdict = f"≥{goal:g}× ✗"
            missed.append(group)
        ratio_text = f"{ratio:.2f}×" if ratio is not None else "-"
        print(f"| `{group}` | {fmt_time(remora)} | {fmt_time(reference)} | {ratio_text} | {verdict} |")
        for other in sorted(set(times) - {"remora", "reference"}):
            print(f"| `{group}/{other}` | {fmt_time(times[other])} | | | |")
    if missed:
        print(f"\nGoal missed in {len(missed)} of {len(rows)}: " + ", ".join(missed))


if __name__ == "__main__":
    main()
