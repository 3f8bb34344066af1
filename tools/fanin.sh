#!/bin/bash
# fanin.sh BEFORE_BIN AFTER_BIN OUT.jsonl [SECONDS]: issue 10's fan-in table, both binaries
# interleaved in the same run (nice'd), embedded server, uring backend, 64 B bodies. Each line is
# one `remora bench --json` result tagged with the binary and the header serialization.
BEFORE=$1; AFTER=$2; OUT=$3; SECS=${4:-3}
ulimit -n "$(ulimit -Hn)" 2>/dev/null
for ser in rocketmq json; do
  for shape in "1 128" "16 8" "128 1" "1000 1" "4000 1"; do
    set -- $shape
    for tag in before after; do
      bin=$BEFORE; [ $tag = after ] && bin=$AFTER
      timeout 120 nice "$bin" bench --json --duration "$SECS" --connections "$1" --inflight "$2" \
        --serialize "$ser" --mode both 2>/dev/null |
        sed "s/^{/{\"bin\":\"$tag\",\"ser\":\"$ser\",/" | tee -a "$OUT"
    done
  done
done
