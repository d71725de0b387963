#!/usr/bin/env bash
# One build, one node against three: the same `kv bench` load (64 writers, 128-byte values,
# 16 partitions, redb, durable defaults) against a single node and against a 3-node RF=3
# cluster on loopback, A B A B, and the cluster's share of the single node's throughput. Both
# share this machine's cores, so the share shows what replication costs.
#
#   bash scripts/bench_single_vs_cluster.sh
#   DURATION=20s ROUNDS=3 READ_RATIO=1 bash scripts/bench_single_vs_cluster.sh
#   KV_BIN_DIR=path/to/build bash scripts/bench_single_vs_cluster.sh   # kv-node and kv, no build
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
READ_RATIO=${READ_RATIO:-0}
SINGLE_PORT=${SINGLE_PORT:-18501}
CLUSTER_BASE=${CLUSTER_BASE:-18511}
if [[ -z ${KV_BIN_DIR:-} ]]; then
    cargo build --release -q -p kv-node -p kv-cli
    KV_BIN_DIR=target/release
fi
KV_NODE_BIN=$KV_BIN_DIR/kv-node
source scripts/lib.sh

bench() { # URL -> ops/s
    "$KV_BIN_DIR/kv" --endpoints "$1" bench --duration "$DURATION" --concurrency 64 \
        --value-size 128 --keys 1000 --read-ratio "$READ_RATIO" | awk '/^ops\/s/ {print int($2)}'
}
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

echo "kv bench: 64 clients, read ratio $READ_RATIO, $DURATION, 16 partitions; single node vs 3 nodes, A B A B"
single_sum=0 cluster_sum=0
for round in $(seq "$ROUNDS"); do
    rm -rf "$DIR/single" "$DIR/n1" "$DIR/n2" "$DIR/n3"
    "$KV_NODE_BIN" --id 1 --listen "127.0.0.1:$SINGLE_PORT" --data-dir "$DIR/single" \
        --partitions 16 --log warn >"$DIR/single.log" 2>&1 &
    PIDS+=($!)
    until curl -sf "http://127.0.0.1:$SINGLE_PORT/ready" >/dev/null; do sleep 0.1; done
    single=$(bench "http://127.0.0.1:$SINGLE_PORT")
    stop_all
    echo "  round $round single   $single ops/s"

    start_cluster "$CLUSTER_BASE" 16
    cluster=$(bench "http://127.0.0.1:$CLUSTER_BASE")
    stop_all
    echo "  round $round 3 nodes  $cluster ops/s"
    single_sum=$((single_sum + single)) cluster_sum=$((cluster_sum + cluster))
done
awk -v s="$single_sum" -v c="$cluster_sum" -v n="$ROUNDS" 'BEGIN {
    printf "single %d ops/s, 3 nodes %d ops/s: 3 nodes = %.0f%% of single\n", s / n, c / n, 100 * c / s
}'
