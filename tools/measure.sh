#!/bin/bash
# measure.sh REMORA_BIN OUTFILE: issue 11's hostile scenarios against both backends, bounded.
BIN=$1; OUT=$2; HERE=$(dirname "$0")
: > "$OUT"
port=19870
for backend in std uring; do
  for d in d1 d2 d3 d4 d5 d6; do
    port=$((port+1))
    "$BIN" serve --listen 127.0.0.1:$port --backend $backend > /dev/null 2>/tmp/measure-serve.err &
    pid=$!
    sleep 0.5
    res=$(timeout 120 python3 "$HERE/hostile.py" $d $port $pid 2>&1 | tail -1)
    echo "{\"backend\":\"$backend\",\"result\":$res}" | tee -a "$OUT"
    kill $pid; wait $pid 2>/dev/null
  done
done
# d7: bench on a server killed mid-run, and on a server that never answers.
for backend in std uring; do
  port=$((port+1))
  "$BIN" serve --listen 127.0.0.1:$port --backend $backend > /dev/null 2>&1 &
  spid=$!
  sleep 0.5
  ( sleep 1.5; kill $spid ) &
  start=$(date +%s.%N)
  /usr/bin/time -f '%e %U %S' -o /tmp/measure-time timeout 60 "$BIN" bench --target 127.0.0.1:$port --mode rpc --backend $backend --duration 4 --connections 2 --inflight 16 > /tmp/measure-bench.out 2>&1
  rc=$?
  wait $spid 2>/dev/null
  echo "{\"backend\":\"$backend\",\"d7\":\"killed\",\"rc\":$rc,\"time\":\"$(cat /tmp/measure-time | tail -1)\",\"summary\":$(grep -v '^\[' /tmp/measure-bench.out | tr -d '\r' | tail -6 | python3 -c 'import sys,json;print(json.dumps(sys.stdin.read()))')}" | tee -a "$OUT"
  port=$((port+1))
  python3 -c "
import socket,threading,time
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('127.0.0.1',$port)); l.listen(64)
def drain(c):
    while c.recv(65536): pass
end=time.time()+25
l.settimeout(1)
while time.time()<end:
    try: c,_=l.accept(); threading.Thread(target=drain,args=(c,),daemon=True).start()
    except socket.timeout: pass
" &
  spid=$!
  # Wait (up to 5 s) until the silent listener accepts: python starts slowly on a loaded machine.
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  /usr/bin/time -f '%e %U %S' -o /tmp/measure-time timeout 60 "$BIN" bench --target 127.0.0.1:$port --mode rpc --backend $backend --duration 3 --connections 2 --inflight 16 > /tmp/measure-bench.out 2>&1
  rc=$?
  kill $spid; wait $spid 2>/dev/null
  echo "{\"backend\":\"$backend\",\"d7\":\"silent\",\"rc\":$rc,\"time\":\"$(cat /tmp/measure-time | tail -1)\",\"summary\":$(grep -v '^\[' /tmp/measure-bench.out | tr -d '\r' | tail -6 | python3 -c 'import sys,json;print(json.dumps(sys.stdin.read()))')}" | tee -a "$OUT"
done
