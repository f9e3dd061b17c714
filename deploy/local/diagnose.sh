#!/usr/bin/env bash
# Prints the state of the machine and of the local services, for a failed or timed-out
# test run (test.sh runs it then, so that the end of a CI log says what was wrong):
# memory, disk, the biggest processes, whether each service answers, and the Kafka
# broker's last errors and heap (a broker out of heap or disk makes every stage retry
# "Message timed out" until the run's time is up).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
dir=$SENDMILL_LOCAL_DIR

echo "=== diagnosis $(date -u +%FT%TZ)"
free -m
df -h / "$dir" 2>/dev/null | uniq
echo "--- largest processes (RSS, MiB)"
ps -eo rss=,pid=,etimes=,args= --sort=-rss | head -12 \
  | awk '{ printf "%8.0f %7s %6ss  ", $1 / 1024, $2, $3; $1 = $2 = $3 = ""; print substr($0, 4, 150) }'
echo "--- services"
# Every question has a time limit: a wedged service must not hang the diagnosis.
t() { timeout 10 "$@"; }
if t kcat -b 127.0.0.1:9092 -L -m 5 >/dev/null 2>&1; then echo "kafka: answers"; else echo "kafka: NO ANSWER"; fi
pid_alive "$dir/kafka/broker/kafka.pid" || echo "kafka: its process is gone"
t redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && echo "redis: answers" || echo "redis: NO ANSWER"
t pg_isready -q -h 127.0.0.1 -p 5432 && echo "postgresql: answers" || echo "postgresql: NO ANSWER"
curl -m 10 -fsS "http://127.0.0.1:18123/ping" >/dev/null 2>&1 && echo "clickhouse: answers" || echo "clickhouse: NO ANSWER"
echo "--- kafka broker: stdout and last warnings/errors"
tail -n 5 "$dir/kafka/broker/stdout.log" 2>/dev/null
grep -E '\] (WARN|ERROR|FATAL) ' "$dir/kafka/broker/server.log" 2>/dev/null | tail -n 15 | cut -c1-300
if command -v jcmd >/dev/null 2>&1 && pid_alive "$dir/kafka/broker/kafka.pid"; then
  echo "--- kafka broker heap"
  t jcmd "$(cat "$dir/kafka/broker/kafka.pid")" GC.heap_info 2>/dev/null | head -4
fi
# Core dumps of test binaries that died of a signal (test.sh allows them).
repo=$(cd "$(dirname "$0")/../.." && pwd)
for core in "$repo"/tests/core "$repo"/tests/core.*; do
  [ -f "$core" ] || continue
  exe=$(file -b "$core" | sed -n "s/.*execfn: '\([^']*\)'.*/\1/p")
  echo "--- core dump $core of ${exe:-an unknown program}: the crashing thread, then every thread's top frames"
  if command -v gdb >/dev/null 2>&1 && [ -n "$exe" ]; then
    timeout 180 gdb -batch -ex "bt 40" -ex "thread apply all bt 8" "$exe" "$core" 2>/dev/null \
      | grep -v '^\[New LWP' | head -n 400
  fi
  rm -f "$core"
done
echo "=== end of diagnosis"
