#!/usr/bin/env bash
# Idle CPU of a 3-node cluster with many partitions: start it, let it settle, then read each
# node's utime+stime from /proc over a quiet window and print the share of one core it used.
#
#   bash scripts/idle_cpu.sh                              # P=64, 20 s window
#   PARTITIONS=16 WINDOW=30 bash scripts/idle_cpu.sh
#   KV_NODE_BIN=path/kv-node bash scripts/idle_cpu.sh     # that binary, no build
set -euo pipefail
cd "$(dirname "$0")/.."

PARTITIONS=${PARTITIONS:-64}
WINDOW=${WINDOW:-20}
SETTLE=${SETTLE:-10}
BASE_PORT=${BASE_PORT:-18101}
if [[ -z ${KV_NODE_BIN:-} ]]; then
    cargo build --release -q -p kv-node
    KV_NODE_BIN=target/release/kv-node
fi
source scripts/lib.sh

start_cluster "$BASE_PORT" "$PARTITIONS"
sleep "$SETTLE" # let elections and leadership balance finish before the quiet window
python3 - "$WINDOW" "${PIDS[@]}" <<'EOF'
import os, sys, time
window, pids = float(sys.argv[1]), sys.argv[2:]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime
start = {p: cpu(p) for p in pids}
time.sleep(window)
for n, p in enumerate(pids, 1):
    used = cpu(p) - start[p]
    print(f"node {n}: {used:.2f} s CPU in {window:.0f} s = {100 * used / window:.1f}% of a core")
EOF
