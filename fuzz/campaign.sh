#!/usr/bin/env bash
# A fuzz campaign: run targets for a given time or number of executions, keep what they found
# (minimised), and record the run in fuzz/README.md's campaign table.
#
#   fuzz/campaign.sh [--seconds S | --runs N] [--keep] [TARGET...]
#
#   --seconds S   stop each target after S seconds (default 300)
#   --runs N      stop each target after N executions instead (libFuzzer's -runs); with
#                 --seconds too, after whichever comes first (the row then says which)
#   --keep        after the run, replace the target's committed `seed-min-*` files with the
#                 minimised corpus (`-merge=1` of the seeds and everything the run found), so the
#                 corpus that grows stays small in the repository and `cargo test` replays it
#   TARGET...     default: every target (frame_decoder json_header binary_header connection)
#
# Each target runs alone (one libFuzzer process, one core) under `nice -n 10`, on a scratch copy
# of its committed seeds plus `corpus/<target>/` leftovers from earlier local runs. The numbers
# recorded are libFuzzer's own: executions (stat::number_of_executed_units), edge coverage and
# features (`cov`, `ft`) and corpus size at the end, and the minimised corpus size.
# A crash stops the campaign with exit 1; the reproducer is under fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=300
timed=0
runs=""
keep=0
targets=()
while (($#)); do
    case "$1" in
    --seconds) seconds="$2"; timed=1; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
    esac
done
((${#targets[@]})) || targets=(frame_decoder json_header binary_header connection)

cargo +nightly fuzz --version >/dev/null 2>&1 || {
    echo "campaign needs a nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
    exit 2
}

run() { nice -n 10 "$@"; }
run cargo +nightly fuzz build -O >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
today="$(date -u +%Y-%m-%d)"
rows=()

for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "$work/$t.min" "corpus/$t"
    cp corpus/"$t"/* "$work/$t/" 2>/dev/null || true
    before=$(ls "$work/$t" | wc -l)
    limit=(-max_total_time="$seconds")
    what="${seconds}s"
    if [ -n "$runs" ]; then
        limit=(-runs="$runs")
        what="$runs runs"
        if ((timed)); then
            limit+=(-max_total_time="$seconds")
            what="$what or ${seconds}s"
        fi
    fi
    echo "== $t: $what from $before inputs"
    start=$(date +%s)
    if ! run cargo +nightly fuzz run -O "$t" "$work/$t" -- "${limit[@]}" \
        -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "!! $t crashed; the reproducer is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" | tail -n 1)
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
    corp=$(sed -E -n 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$done_line")
    # Minimise: the smallest set of inputs that keeps every feature the run reached.
    run cargo +nightly fuzz run -O "$t" "$work/$t.min" "$work/$t" -- -merge=1 \
        -rss_limit_mb=2048 -max_len=65536 >"$work/$t.merge.log" 2>&1
    min=$(ls "$work/$t.min" | wc -l)
    echo "   $execs execs in ${elapsed}s, cov $cov, ft $ft, corpus $corp, minimised $min"
    if ((keep)); then
        rm -f corpus/"$t"/seed-min-*
        committed=$(find "corpus/$t" -type f -name 'seed-*' -exec sha1sum {} + | cut -c1-40)
        for f in "$work/$t.min"/*; do
            sum=$(sha1sum "$f" | cut -c1-40)
            # Inputs that are already committed seeds keep their names.
            grep -qx "$sum" <<<"$committed" || cp "$f" "corpus/$t/seed-min-${sum:0:16}"
        done
        # Local leftovers (ignored by git) are now inside the minimised set.
        find "corpus/$t" -type f ! -name 'seed-*' -delete
    fi
    name="\`$t\`"
    if [ -n "$runs" ] && ((timed)) && ((execs < runs)); then
        name="$name (stopped by the ${seconds} s limit at $execs of $runs runs, no crash)"
    fi
    rows+=("| $today | $name | $execs | $elapsed | $cov | $ft | $corp | $min |")
done

if ! grep -q '^## Campaigns' README.md; then
    cat >>README.md <<'EOF'

## Campaigns

Recorded by `fuzz/campaign.sh` (libFuzzer's own counts; `-O` builds, one process, `nice -n 10`,
on the shared 2-core machine). `cov`/`ft`: edges and features at the end; `corpus`: inputs at the
end; `kept`: the minimised corpus (`-merge=1`), committed as `seed-min-*` with `--keep`.

| date | target | executions | seconds | cov | ft | corpus | kept |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
EOF
fi
# The new rows go right after the last row of the campaign table (text may follow the table).
printf '%s\n' "${rows[@]}" >"$work/rows"
awk -v rows="$work/rows" '
    { line[NR] = $0 }
    /^## Campaigns/ { section = NR }
    END {
        for (i = section; i <= NR; i++) if (line[i] ~ /^\| /) last = i
        for (i = 1; i <= NR; i++) {
            print line[i]
            if (i == last) while ((getline row < rows) > 0) print row
        }
    }' README.md >"$work/README.md"
cp "$work/README.md" README.md
printf '%s\n' "${rows[@]}"
