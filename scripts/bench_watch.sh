#!/usr/bin/env bash
# What watches cost and how fast they deliver, on a 3-node cluster (release build, redb):
# 1. node 1's memory (RSS) and CPU (utime+stime over WINDOW s) with no watch, then with
#    IDLE_WATCHES idle prefix watches open on it;
# 2. delivery latency, with those idle watches still open (on other prefixes): one watcher on
#    node 1 follows a prefix while writers put RATE writes/s (through all three nodes) for
#    SECONDS s; the latency of a change is from just before its PUT was sent to its event's
#    arrival (so it includes the write's commit), and also from the write's acknowledgement.
#
#   bash scripts/bench_watch.sh
#   IDLE_WATCHES=2000 RATE=500 bash scripts/bench_watch.sh
#   KV_NODE_BIN=path/kv-node bash scripts/bench_watch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PARTITIONS=${PARTITIONS:-16}
IDLE_WATCHES=${IDLE_WATCHES:-1000}
WINDOW=${WINDOW:-20}
RATE=${RATE:-1000}
SECONDS_=${SECONDS_:-20}
BASE_PORT=${BASE_PORT:-18201}
if [[ -z ${KV_NODE_BIN:-} ]]; then
    cargo build --release -q -p kv-node
    KV_NODE_BIN=target/release/kv-node
fi
source scripts/lib.sh
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" # a socket per idle watch, both ends

start_cluster "$BASE_PORT" "$PARTITIONS"
sleep 10 # elections and leadership balance settle first
python3 scripts/bench_watch.py --base-port "$BASE_PORT" --pid "${PIDS[0]}" \
    --idle "$IDLE_WATCHES" --window "$WINDOW" --rate "$RATE" --seconds "$SECONDS_"
