#!/bin/bash
# transport_cmp.sh [OUT.jsonl] [SECONDS] [ROUNDS]: issue 9's std-driver row — `remora bench
# --backend std` against rocketmq-transport 1.0.0 (the Rust reference's TCP transport), 1
# connection, 64 B bodies, N = 1, 32, 128 in flight, in one run, alternating:
#
#   tt  transport_echo pair            rocketmq-transport client -> rocketmq-transport server (one process)
#   rr  remora bench --backend std     Remora std client -> embedded Remora std server (one process)
#   rn  the same with --std-then       the client keeps its calls in flight with `call_then` from
#                                      one thread (continuations), not a blocking thread per call
#   rt  remora bench --target T        Remora std client -> the rocketmq-transport server (own process)
#   tr  transport_echo client          rocketmq-transport client -> `remora serve --backend std` (own process)
#
# With REMORA_BASE=/path/to/other/remora, `rr` and `rt` are also run with that binary (tagged
# rr-base, rt-base): a before/after of a change in the same run.
#
# Binaries (build first):
#   cargo build --release --bin remora
#   cargo build --release -p remora-benches --features transport --bin transport_echo
# Overridable: REMORA=..., ECHO=... . SERS="json rocketmq" to run both header types (default json).
# Everything binds 127.0.0.1; every run is bounded by `timeout`; the servers this script starts are
# killed by PID when it exits. Each JSONL line is one run; the table is printed at the end.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/transport_cmp.jsonl}; SECS=${2:-5}; ROUNDS=${3:-2}
REMORA=${REMORA:-target/release/remora}
ECHO=${ECHO:-target/release/transport_echo}
BASE=${REMORA_BASE:-}
SERS=${SERS:-json}
for b in "$REMORA" "$ECHO" ${BASE:+"$BASE"}; do
  [ -x "$b" ] || { echo "missing $b (see the build lines at the top of $0)" >&2; exit 2; }
done
: > "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
TIME=$(mktemp /tmp/transport_cmp.time.XXXXXX)
trap 'cleanup; rm -f "$TIME"' EXIT

# CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

# record TAG ROUND SER N SERVER_PID|- CMD...: runs CMD (printing one JSON line) under
# /usr/bin/time; appends the line with the tag, round, the command's CPU per request and, with a
# server PID, the server's CPU per request over the same run.
record() {
  local tag=$1 round=$2 ser=$3 n=$4 spid=$5; shift 5
  local s0=0 s1=0
  [ "$spid" != - ] && s0=$(proc_cpu "$spid")
  local line
  line=$(/usr/bin/time -f '%U %S' -o "$TIME" timeout $((SECS + 30)) "$@" 2>/dev/null | tail -1)
  [ "$spid" != - ] && s1=$(proc_cpu "$spid")
  local u s; read -r u s < <(tail -1 "$TIME")
  python3 - "$line" "$tag" "$round" "$ser" "$n" "$u" "$s" "$s0" "$s1" <<'EOF' | tee -a "$OUT"
import json, sys
line, tag, rnd, ser, n, u, s, s0, s1 = sys.argv[1:]
try:
    d = json.loads(line)
except ValueError:
    d = {"failed": line or "no output"}
reqs = max(d.get("requests", 0), 1)
try:
    cpu = float(u) + float(s)
except ValueError:
    cpu = 0.0
d.update(tag=tag, round=int(rnd), ser=ser, n=int(n),
         proc_cpu_us_per_req=round(cpu * 1e6 / reqs, 2))
if s1 != "0":
    d["server_cpu_us_per_req"] = round((float(s1) - float(s0)) * 1e6 / reqs, 2)
print(json.dumps(d))
EOF
}

# A server in its own process; prints its PID. `wait_port PORT` waits until it listens.
wait_port() {
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; return 1
}

port=$((20000 + RANDOM % 20000))
for round in $(seq "$ROUNDS"); do
  for ser in $SERS; do
    # The cross pairs' servers, one of each for the round.
    tport=$((port++)); rport=$((port++))
    "$ECHO" server --listen 127.0.0.1:$tport --threads 1 --for $((SECS * 40 + 120)) >/dev/null 2>&1 &
    tpid=$!; PIDS+=("$tpid")
    timeout $((SECS * 40 + 120)) "$REMORA" serve --backend std --listen 127.0.0.1:$rport --quiet \
      >/dev/null 2>&1 &
    rwrap=$!; PIDS+=("$rwrap")
    wait_port $tport && wait_port $rport || exit 1
    # The server itself (under `timeout`), for its CPU time.
    rpid=$(pgrep -P "$rwrap" | head -1); rpid=${rpid:-$rwrap}
    for n in 1 32 128; do
      order=(tt rr rn rt tr)
      # The second round goes the other way round (a drift in the machine's load then shows up
      # as a difference between rounds instead of as a bias).
      [ $((round % 2)) -eq 0 ] && order=(tr rt rn rr tt)
      for tag in "${order[@]}"; do
        case $tag in
          tt) record tt "$round" "$ser" "$n" - "$ECHO" pair --inflight "$n" --duration "$SECS" \
                --serialize "$ser" --json ;;
          rr) record rr "$round" "$ser" "$n" - "$REMORA" bench --backend std --mode rpc \
                --connections 1 --inflight "$n" --duration "$SECS" --serialize "$ser" --json --quiet
              [ -n "$BASE" ] && record rr-base "$round" "$ser" "$n" - "$BASE" bench --backend std \
                --mode rpc --connections 1 --inflight "$n" --duration "$SECS" --serialize "$ser" \
                --json --quiet ;;
          rn) record rn "$round" "$ser" "$n" - "$REMORA" bench --backend std --mode rpc \
                --std-then --connections 1 --inflight "$n" --duration "$SECS" --serialize "$ser" \
                --json --quiet ;;
          rt) record rt "$round" "$ser" "$n" "$tpid" "$REMORA" bench --backend std --mode rpc \
                --target 127.0.0.1:$tport --connections 1 --inflight "$n" --duration "$SECS" \
                --serialize "$ser" --json --quiet
              [ -n "$BASE" ] && record rt-base "$round" "$ser" "$n" "$tpid" "$BASE" bench \
                --backend std --mode rpc --target 127.0.0.1:$tport --connections 1 --inflight "$n" \
                --duration "$SECS" --serialize "$ser" --json --quiet ;;
          tr) record tr "$round" "$ser" "$n" "$rpid" "$ECHO" client --target 127.0.0.1:$rport \
                --inflight "$n" --duration "$SECS" --serialize "$ser" --json ;;
        esac
      done
    done
    kill "$tpid" "$rwrap" 2>/dev/null; wait "$tpid" "$rwrap" 2>/dev/null
    PIDS=()
  done
done

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["round"], r["ser"], r["n"], r["tag"]): r for r in rows}
tags = ["tt", "rr", "rn", "rt", "tr"] + [t for t in ("rr-base", "rt-base") if any(r["tag"] == t for r in rows)]
def rps(k):
    r = by.get(k)
    return r.get("rps") if r else None
def fmt(v):
    return "—" if v is None else f"{v:,.0f}"
def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.2f}"
head = "| round | header | N | " + " | ".join(f"{t} req/s" for t in tags) + \
       " | rr / tt | rn / tt | rt / tt | tr / tt |" + (" rr / rr-base |" if "rr-base" in tags else "")
print(head)
print("|" + "---|" * (head.count("|") - 1))
for (rnd, ser, n) in sorted({(r["round"], r["ser"], r["n"]) for r in rows}):
    k = lambda t: (rnd, ser, n, t)
    cells = [fmt(rps(k(t))) for t in tags]
    line = f"| {rnd} | {ser} | {n} | " + " | ".join(cells) + \
        f" | {ratio(rps(k('rr')), rps(k('tt')))} | {ratio(rps(k('rn')), rps(k('tt')))} | {ratio(rps(k('rt')), rps(k('tt')))} | {ratio(rps(k('tr')), rps(k('tt')))} |"
    if "rr-base" in tags:
        line += f" {ratio(rps(k('rr')), rps(k('rr-base')))} |"
    print(line)
print()
print("| round | header | N | tag | p50 µs | p99 µs | process CPU µs/req | server process CPU µs/req | errors |")
print("|---|---|---|---|---:|---:|---:|---:|---|")
for r in sorted(rows, key=lambda r: (r["round"], r["ser"], r["n"], tags.index(r["tag"]) if r["tag"] in tags else 99)):
    errs = r.get("errors", sum(r.get(k, 0) for k in ("wrong", "rejected", "failed")))
    print(f"| {r['round']} | {r['ser']} | {r['n']} | {r['tag']} | {r.get('p50_us', '—')} | {r.get('p99_us', '—')} | "
          f"{r.get('proc_cpu_us_per_req', '—')} | {r.get('server_cpu_us_per_req', '—')} | {errs} |")
EOF
