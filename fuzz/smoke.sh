#!/usr/bin/env bash
# Fuzz smoke run for CI: each target for FUZZ_SECONDS (default 20) seconds, one after the other,
# starting from its committed seeds (corpus/<target>/seed-*). Fails on a crash or a build error.
# Skips (exit 0) with "skipping fuzz smoke run: <reason>" when the nightly toolchain or
# cargo-fuzz is missing.
#
#   fuzz/smoke.sh                 # from anywhere
#   FUZZ_SECONDS=60 fuzz/smoke.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${FUZZ_SECONDS:-20}"
targets=(frame_decoder json_header binary_header connection route)

skip() {
    echo "skipping fuzz smoke run: $1"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
cargo +nightly --version >/dev/null 2>&1 ||
    skip "no nightly toolchain (install with: rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 ||
    skip "cargo-fuzz is not installed (install with: cargo install cargo-fuzz)"

# Low priority: the fuzzer would otherwise take a whole core from whatever else runs.
run() {
    if command -v nice >/dev/null 2>&1; then nice -n 10 "$@"; else "$@"; fi
}

echo "== building fuzz targets ($(cargo +nightly fuzz --version))"
run cargo +nightly fuzz build

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
for t in "${targets[@]}"; do
    # A scratch copy of the committed seeds, so the run adds nothing to the checkout.
    mkdir -p "$work/$t"
    cp corpus/"$t"/seed-* "$work/$t/"
    echo "== fuzz smoke: $t for ${seconds}s on $(ls "$work/$t" | wc -l) seeds"
    if run cargo +nightly fuzz run "$t" "$work/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" || true
    else
        echo "!! $t failed; last lines of its log:"
        tail -n 60 "$work/$t.log"
        echo "!! reproducer (if any) is under fuzz/artifacts/$t/"
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz smoke run failed: ${failed[*]}"
    exit 1
fi
echo "fuzz smoke run passed: ${targets[*]}"
