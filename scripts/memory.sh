#!/usr/bin/env bash
# Peak memory of a node: start a 3-node cluster (release build, redb, the default --cache-mb
# unless CACHE_MB is set), load KEYS keys of VALUE_SIZE bytes once each, read them all back,
# and print each node's peak RSS (VmHWM) and current RSS (VmRSS).
#
#   bash scripts/memory.sh                 # 100k keys of 1 KiB
#   KEYS=1000000 CACHE_MB=256 bash scripts/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-1024}
PARTITIONS=${PARTITIONS:-16}
BASE_PORT=${BASE_PORT:-17401}
CACHE_FLAG=()
[[ -n "${CACHE_MB:-}" ]] && CACHE_FLAG=(--cache-mb "$CACHE_MB")

cargo build --release -q -p kv-node -p kv-cli
BIN=target/release
source scripts/lib.sh

CLUSTER=""
for i in 1 2 3; do
    CLUSTER+="${CLUSTER:+,}$i=127.0.0.1:$((BASE_PORT + i - 1))"
done
for i in 1 2 3; do
    "$BIN/kv-node" --id "$i" --listen "127.0.0.1:$((BASE_PORT + i - 1))" \
        --data-dir "$DIR/n$i" --initial-cluster "$CLUSTER" --partitions "$PARTITIONS" \
        "${CACHE_FLAG[@]}" --log warn >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
done
ENDPOINTS="http://127.0.0.1:$BASE_PORT,http://127.0.0.1:$((BASE_PORT + 1)),http://127.0.0.1:$((BASE_PORT + 2))"
for i in 1 2 3; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$((BASE_PORT + i - 1))/ready" >/dev/null && break
        sleep 0.2
    done
done

echo "== loading $KEYS keys of $VALUE_SIZE bytes"
"$BIN/kv" --endpoints "$ENDPOINTS" bench --sequential --requests "$KEYS" --keys "$KEYS" \
    --value-size "$VALUE_SIZE" --concurrency 64 --key-prefix mem/ | grep -E "ops/s|errors" || true
echo "== reading them back"
"$BIN/kv" --endpoints "$ENDPOINTS" bench --sequential --requests "$KEYS" --keys "$KEYS" \
    --read-ratio 1 --concurrency 64 --key-prefix mem/ | grep -E "ops/s|errors" || true

echo "== memory per node (cache: ${CACHE_MB:-default})"
for i in 1 2 3; do
    pid=${PIDS[$((i - 1))]}
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    now=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    disk=$(du -sk "$DIR/n$i" | cut -f1)
    printf "node %d: peak RSS %d MiB, RSS now %d MiB, data dir %d MiB\n" \
        "$i" $((peak / 1024)) $((now / 1024)) $((disk / 1024))
done
