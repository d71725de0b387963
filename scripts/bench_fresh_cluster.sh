#!/usr/bin/env bash
# Write latency of a fresh cluster: start 3 nodes (16 partitions), start `kv bench` within a
# second of the first accepted write, and print its figures for the first 10 s, then for 10 s
# once the cluster has settled. A cluster whose first elections land on the wrong nodes pauses
# writes while it moves leaderships, which shows in the first run's p99.
#
#   bash scripts/bench_fresh_cluster.sh                       # this checkout's release build
#   BIN=/path/to/other/target/release bash scripts/bench_fresh_cluster.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_PORT=${BASE_PORT:-17501}
if [[ -z "${BIN:-}" ]]; then
    cargo build --release -q -p kv-node -p kv-cli
    BIN=target/release
fi
KV=${KV:-target/release/kv}
[[ -x "$KV" ]] || cargo build --release -q -p kv-cli
source scripts/lib.sh

CLUSTER="1=127.0.0.1:$BASE_PORT,2=127.0.0.1:$((BASE_PORT + 1)),3=127.0.0.1:$((BASE_PORT + 2))"
for i in 1 2 3; do
    "$BIN/kv-node" --id "$i" --listen "127.0.0.1:$((BASE_PORT + i - 1))" --data-dir "$DIR/n$i" \
        --initial-cluster "$CLUSTER" --partitions 16 --log warn,kv_node=info >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
done
ENDPOINTS="http://127.0.0.1:$BASE_PORT,http://127.0.0.1:$((BASE_PORT + 1)),http://127.0.0.1:$((BASE_PORT + 2))"
until curl -sf -X PUT --data-binary x "http://127.0.0.1:$BASE_PORT/v1/kv/first" >/dev/null 2>&1; do
    sleep 0.05
done
echo "== first write accepted; bench starts now (binary: $BIN)"
bench() {
    "$KV" --endpoints "$ENDPOINTS" bench --duration 10s --concurrency 64 --value-size 128 \
        --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
lat = r.get("latency_ms") or {}
print("ops/s %.0f  p50 %s ms  p99 %s ms  max %s ms  errors %s" % (
    r["ops_per_sec"], lat.get("p50"), lat.get("p99"), lat.get("max"), r["error_kinds"] or 0))'
}
echo -n "fresh (first 10 s):    "; bench
echo -n "settled (next 10 s):   "; bench
grep -h "handing leadership" "$DIR"/n*.log | wc -l | xargs echo "leadership transfers:"
