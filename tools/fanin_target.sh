#!/bin/bash
# fanin_target.sh BEFORE_BIN AFTER_BIN EPOLL_ECHO_BIN OUT.jsonl [SECONDS] [SHAPES...]: the bench
# against servers in their own processes (so 10,000 connections fit the descriptor limit), per
# header type and shape, interleaved (REPS times, default 1):
#   rpc   BEFORE and AFTER: `remora bench --mode rpc` against `remora serve --backend uring` of
#         the same binary;
#   raw   AFTER: `--mode raw` against `remora serve --backend uring --mode raw` (the same
#         EventLoop echoing bytes, no protocol);
#   epoll AFTER: `--mode raw` against the plain epoll echo (uring/examples/epoll_echo.rs, the
#         external baseline).
# Servers run SERVER_THREADS threads (default: the bench's `remora serve` default, one per core;
# the epoll echo is given the same count), the bench CLIENT_THREADS (default 1). Benchmarks run
# at normal priority. Each line: the bench's JSON plus the server's CPU time during the run (from
# /proc/PID/stat) and the CPU per request of client (whole process) and server, over the whole
# run (connecting included: the only figure for a bench without a window); and, sampling the
# server every 50 ms, the CPU per request within the bench's measured window (`window_unix`:
# from the moment every connection had its first answer to the stop) of the server and of
# client + server (`window_server_cpu_us_per_req`, `window_cpu_us_per_req`; the client's is the
# bench's own `process_cpu_us_per_req`).
BEFORE=$1; AFTER=$2; ECHO=$3; OUT=$4; SECS=${5:-3}; shift 5
SHAPES=("$@"); [ ${#SHAPES[@]} -eq 0 ] && SHAPES=("1000 1" "10000 1")
CT=${CLIENT_THREADS:-1}; ST=${SERVER_THREADS:-$(nproc)}
ulimit -n "$(ulimit -Hn)" 2>/dev/null
port=$((19700 + RANDOM % 200))
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
run() { # tag bin mode ser conns inflight server-kind server-pid port
  local s0 s1 line sampler
  s0=$(ticks "$8")
  ( while kill -0 "$8" 2>/dev/null; do echo "$(date +%s.%N) $(ticks "$8")"; sleep 0.05; done ) \
    > /tmp/fanin_target.$$.samples & sampler=$!
  line=$(/usr/bin/time -f '%U %S' -o /tmp/fanin_target.$$.time timeout 240 "$2" bench --json \
    --target "127.0.0.1:$9" --duration "$SECS" --connections "$5" --inflight "$6" --serialize "$4" \
    --client-threads "$CT" --mode "$3" --timeout-ms 30000 2>/dev/null | tail -1)
  s1=$(ticks "$8")
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
  read u s < <(tail -1 /tmp/fanin_target.$$.time)
  [ -z "$line" ] && { echo "no result: $*" >&2; return; }
  echo "$line" | python3 -c "
import sys, json
d = json.loads(sys.stdin.read()); cpu = $u + $s; srv = ($s1 - $s0) / 100.0
n = max(d['requests'], 1)
samples = [tuple(map(float, l.split())) for l in open('/tmp/fanin_target.$$.samples') if len(l.split()) == 2]
def at(t):  # server CPU ticks at time t, interpolated between samples
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
    return None
if 'window_unix' in d and 'process_cpu_us_per_req' in d:
    a, b = at(d['window_unix'][0]), at(d['window_unix'][1])
    if a is not None and b is not None:
        w = max(d['window_requests'], 1)
        sw = (b - a) / 100.0 * 1e6 / w
        d.update(window_server_cpu_us_per_req=round(sw, 2),
                 window_cpu_us_per_req=round(sw + d['process_cpu_us_per_req'], 2))
d.update(bin='$1', ser='$4', server='$7', client_threads=$CT, server_threads=$ST,
         cpu_s=round(cpu, 2), server_cpu_s=round(srv, 2),
         cpu_us_per_req=round(cpu * 1e6 / n, 2), server_cpu_us_per_req=round(srv * 1e6 / n, 2),
         total_cpu_us_per_req=round((cpu + srv) * 1e6 / n, 2))
print(json.dumps(d))" | tee -a "$OUT"
}
serve() { # bin kind ser port maxconn -> pid
  case $2 in
    rpc) "$1" serve --listen 127.0.0.1:$4 --backend uring --serialize $3 --quiet \
           --max-connections $5 >/dev/null 2>&1 & ;;
    raw) "$1" serve --listen 127.0.0.1:$4 --backend uring --mode raw \
           --max-connections $5 >/dev/null 2>&1 & ;;
    epoll) "$ECHO" 127.0.0.1:$4 "$ST" >/dev/null 2>&1 & ;;
  esac
  echo $!
}
for rep in $(seq "${REPS:-1}"); do
for ser in ${SERS:-rocketmq json}; do
  for shape in "${SHAPES[@]}"; do
    set -- $shape; c=$1; n=$2
    for job in "before rpc" "after rpc" "after raw" "after epoll"; do
      set -- $job; tag=$1; kind=$2
      bin=$BEFORE; [ $tag = after ] && bin=$AFTER
      port=$((port + 1))
      spid=$(serve "$bin" $kind $ser $port $((c + 100)))
      sleep 0.5
      mode=rpc; [ $kind != rpc ] && mode=raw
      server=remora-serve; [ $kind = raw ] && server=uring-echo; [ $kind = epoll ] && server=epoll-echo
      run $tag "$bin" $mode $ser $c $n $server $spid $port
      kill $spid 2>/dev/null; wait $spid 2>/dev/null
    done
  done
done
done
rm -f /tmp/fanin_target.$$.time /tmp/fanin_target.$$.samples
