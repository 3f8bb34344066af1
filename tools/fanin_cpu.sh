#!/bin/bash
# fanin_cpu.sh BEFORE_BIN AFTER_BIN OUT.jsonl [SECONDS] [SHAPES...]: issue 10's fan-in table with
# the embedded server, each mode in its own process under /usr/bin/time, so each line also
# carries the CPU time (user + sys, of client and embedded server together) per request: a
# figure that holds on a shared, overloaded machine where requests per second mostly measure
# how much CPU the run was given. rpc and raw, BEFORE and AFTER, interleaved (REPS times); with
# the after-binary, raw is a byte echo on the same io_uring EventLoop as the rpc server (before
# it was tokio-uring). CLIENT_THREADS / SERVER_THREADS (default 1) set the load generator's and
# the embedded server's threads. Normal priority.
BEFORE=$1; AFTER=$2; OUT=$3; SECS=${4:-3}; shift 4
SHAPES=("$@"); [ ${#SHAPES[@]} -eq 0 ] && SHAPES=("1 128" "16 8" "128 1" "1000 1")
CT=${CLIENT_THREADS:-1}; ST=${SERVER_THREADS:-1}
ulimit -n "$(ulimit -Hn)" 2>/dev/null
for rep in $(seq "${REPS:-1}"); do
for ser in ${SERS:-rocketmq json}; do
  for shape in "${SHAPES[@]}"; do
    set -- $shape
    for mode in rpc raw; do
      for tag in before after; do
        bin=$BEFORE; [ $tag = after ] && bin=$AFTER
        line=$(/usr/bin/time -f '%U %S' -o /tmp/fanin_cpu.$$.time timeout 120 "$bin" bench --json \
          --duration "$SECS" --connections "$1" --inflight "$2" --serialize "$ser" --mode $mode --timeout-ms 30000 \
          --client-threads "$CT" --server-threads "$ST" 2>/dev/null | tail -1)
        [ -z "$line" ] && { echo "no result: $bin $ser $shape $mode" >&2; continue; }
        read u s < <(tail -1 /tmp/fanin_cpu.$$.time)
        echo "$line" | python3 -c "
import sys, json
d = json.loads(sys.stdin.read()); cpu = $u + $s
d.update(bin='$tag', ser='$ser', client_threads=$CT, server_threads=$ST, cpu_s=round(cpu, 2),
         cpu_us_per_req=round(cpu * 1e6 / max(d['requests'], 1), 2))
print(json.dumps(d))" | tee -a "$OUT"
      done
    done
  done
done
done
rm -f /tmp/fanin_cpu.$$.time
