#!/bin/bash
# fanin_target.sh BEFORE_BIN AFTER_BIN EPOLL_ECHO_BIN OUT.jsonl [SECONDS] [SHAPES...]: the bench
# against servers in their own processes (so 10,000 connections fit the descriptor limit):
# rpc against `remora serve --backend uring` of the same binary, raw against the plain epoll echo
# (uring/examples/epoll_echo.rs). Each line: one `remora bench --json` result plus the CPU time
# of the bench process per request.
BEFORE=$1; AFTER=$2; ECHO=$3; OUT=$4; SECS=${5:-3}; shift 5
SHAPES=("$@"); [ ${#SHAPES[@]} -eq 0 ] && SHAPES=("1000 1" "10000 1")
ulimit -n "$(ulimit -Hn)" 2>/dev/null
port=19700
run() { # tag bin mode target ser conns inflight
  line=$(/usr/bin/time -f '%U %S' -o /tmp/fanin_target.time timeout 180 nice "$2" bench --json \
    --target "$4" --duration "$SECS" --connections "$6" --inflight "$7" --serialize "$5" \
    --mode "$3" 2>/dev/null | tail -1)
  read u s < <(tail -1 /tmp/fanin_target.time)
  echo "$line" | python3 -c "
import sys, json
d = json.loads(sys.stdin.read()); cpu = $u + $s
d.update(bin='$1', ser='$5', server='$8', cpu_s=round(cpu, 2), cpu_us_per_req=round(cpu * 1e6 / max(d['requests'], 1), 2))
print(json.dumps(d))" | tee -a "$OUT"
}
for ser in ${SERS:-rocketmq json}; do
  for shape in "${SHAPES[@]}"; do
    set -- $shape; c=$1; n=$2
    for tag in before after; do
      bin=$BEFORE; [ $tag = after ] && bin=$AFTER
      port=$((port+1))
      nice "$bin" serve --listen 127.0.0.1:$port --backend uring --serialize $ser \
        --max-connections $((c + 100)) >/dev/null 2>&1 & spid=$!
      sleep 0.5
      run $tag "$bin" rpc 127.0.0.1:$port $ser $c $n remora-serve
      kill $spid; wait $spid 2>/dev/null
    done
    port=$((port+1))
    nice "$ECHO" 127.0.0.1:$port 2 >/dev/null 2>&1 & epid=$!
    sleep 0.3
    for tag in before after; do
      bin=$BEFORE; [ $tag = after ] && bin=$AFTER
      run $tag "$bin" raw 127.0.0.1:$port $ser $c $n epoll-echo
    done
    kill $epid; wait $epid 2>/dev/null
  done
done
