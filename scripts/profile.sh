#!/usr/bin/env bash
# Where a node's CPU goes under write load: start a 3-node cluster (release build, 16
# partitions), drive it with `kv bench` (64 writers, 128-byte values, through node 1 unless
# VIA_ALL=1), record node 1 with perf for SECONDS seconds, and print the top symbols by self
# time (and, with CALLERS=1, a call graph summary).
#
#   bash scripts/profile.sh                      # writes
#   READ_RATIO=1 bash scripts/profile.sh         # linearizable reads
#   SECONDS_=20 TOP=40 bash scripts/profile.sh
#   PERF_KEEP=/tmp/w.data bash scripts/profile.sh   # keep the recording for perf report
#   NODE=2 bash scripts/profile.sh               # record a follower-heavy node instead
#
# Needs perf (`apt-get install -y linux-perf`). The release profile keeps line tables
# (Cargo.toml), so symbols resolve.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORD=${SECONDS_:-10}
TOP=${TOP:-30}
READ_RATIO=${READ_RATIO:-0}
NODE=${NODE:-1}
BASE_PORT=${BASE_PORT:-17701}
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null
# BIN_DIR: a folder with kv-node and kv to profile instead of a fresh release build, e.g. one
# built with frame pointers for whole call graphs:
#   RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --target-dir target/fp -p kv-node -p kv-cli
#   BIN_DIR=target/fp/release CALLERS=1 bash scripts/profile.sh
BIN=${BIN_DIR:-target/release}
[[ -n "${BIN_DIR:-}" ]] || cargo build --release -q -p kv-node -p kv-cli
source scripts/lib.sh

CLUSTER="1=127.0.0.1:$BASE_PORT,2=127.0.0.1:$((BASE_PORT + 1)),3=127.0.0.1:$((BASE_PORT + 2))"
for i in 1 2 3; do
    "$BIN/kv-node" --id "$i" --listen "127.0.0.1:$((BASE_PORT + i - 1))" --data-dir "$DIR/n$i" \
        --initial-cluster "$CLUSTER" --partitions 16 --log warn >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2 3; do
    until curl -sf "http://127.0.0.1:$((BASE_PORT + i - 1))/ready" >/dev/null; do sleep 0.1; done
done
ENDPOINTS="http://127.0.0.1:$BASE_PORT"
[[ "${VIA_ALL:-0}" == 1 ]] && ENDPOINTS="$ENDPOINTS,http://127.0.0.1:$((BASE_PORT + 1)),http://127.0.0.1:$((BASE_PORT + 2))"
if [[ "$READ_RATIO" != 0 ]]; then
    "$BIN/kv" --endpoints "$ENDPOINTS" bench --sequential --requests 1000 --keys 1000 >/dev/null
fi
"$BIN/kv" --endpoints "$ENDPOINTS" bench --duration "$((RECORD + 4))s" --concurrency 64 \
    --value-size 128 --keys 1000 --read-ratio "$READ_RATIO" >"$DIR/bench.txt" &
BENCH=$!
sleep 2
# CPU of every node over the recording, from /proc (utime+stime, in clock ticks).
cpu() { for pid in "${PIDS[@]}"; do awk '{print $14 + $15}' "/proc/$pid/stat"; done; }
before=($(cpu))
perf record -F 499 -g -o "$DIR/perf.data" -p "${PIDS[$((NODE - 1))]}" -- sleep "$RECORD" 2>/dev/null
after=($(cpu))
[[ -n "${PERF_KEEP:-}" ]] && cp "$DIR/perf.data" "$PERF_KEEP"
ticks=$(getconf CLK_TCK)
for i in 0 1 2; do
    echo "node $((i + 1)): $(( (after[i] - before[i]) * 100 / ticks / RECORD ))% of a core"
done
wait "$BENCH"
grep -E "ops/s|p50|p99 " "$DIR/bench.txt" || true
echo "== top $TOP symbols of node $NODE by self time"
perf report -i "$DIR/perf.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | sed -E 's/ +$//' | cut -c1-150 | head -"$TOP"
if [[ "${CALLERS:-0}" == 1 ]]; then
    echo "== by inclusive time"
    perf report -i "$DIR/perf.data" --children --sort symbol -g none --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | sed -E 's/ +$//' | cut -c1-150 | head -"$TOP"
fi
