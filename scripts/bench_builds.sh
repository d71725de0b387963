#!/usr/bin/env bash
# Two builds of kv side by side, in one run: a 3-node cluster of each on loopback (16
# partitions, redb, durable defaults), the same `kv bench` load against each (64 writers,
# 128-byte values), A B A B, through plain HTTP to node 1 (which forwards what it does not
# lead) and through kv-client (`--via-client`: leader routing). Prints each run and the ratios
# of the means. For "before and after" figures of a change.
#
#   KV_A=path/to/new-build KV_B=path/to/old-build bash scripts/bench_builds.sh
#   DURATION=20s ROUNDS=3 READ_RATIO=1 KV_A=... KV_B=... bash scripts/bench_builds.sh
#
# Each of KV_A and KV_B is a folder holding `kv-node` and `kv`; the load always comes from
# KV_A's `kv`, so both builds meet the same client.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-64}
PARTITIONS=${PARTITIONS:-16}
READ_RATIO=${READ_RATIO:-0}
A_BASE=${A_BASE:-18301}
B_BASE=${B_BASE:-18401}
: "${KV_A:?set KV_A to a folder with kv-node and kv (the new build)}"
: "${KV_B:?set KV_B to a folder with kv-node and kv (the old build)}"
KV=$KV_A/kv
source scripts/lib.sh

start() { # BASE NAME BIN_DIR
    local cluster="1=127.0.0.1:$1,2=127.0.0.1:$(($1 + 1)),3=127.0.0.1:$(($1 + 2))"
    for i in 1 2 3; do
        "$3/kv-node" --id "$i" --listen "127.0.0.1:$(($1 + i - 1))" --data-dir "$DIR/$2-$i" \
            --initial-cluster "$cluster" --partitions "$PARTITIONS" --log warn \
            >"$DIR/$2-$i.log" 2>&1 &
        PIDS+=($!)
    done
    for i in 0 1 2; do
        for _ in $(seq 300); do
            curl -sf "http://127.0.0.1:$(($1 + i))/ready" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
}
start "$A_BASE" a "$KV_A"
start "$B_BASE" b "$KV_B"
# Let elections and leadership balance settle before measuring.
sleep 5
if [[ "$READ_RATIO" != 0 ]]; then
    for base in "$A_BASE" "$B_BASE"; do
        "$KV" --endpoints "http://127.0.0.1:$base" bench --sequential --requests 1000 \
            --keys 1000 >/dev/null
    done
fi

bench() { # BASE [KV BENCH ARGS...] -> "ops p99_ms errors"
    local base=$1
    shift
    "$KV" --endpoints "http://127.0.0.1:$base" bench "$@" --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --value-size 128 --keys 1000 --read-ratio "$READ_RATIO" \
        --json >"$DIR/bench.json"
    python3 - "$DIR/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['ops_per_sec']:.0f} {(r['latency_ms'] or {}).get('p99', 0):.1f} {r['errors']}")
EOF
}

echo "kv bench: $CONCURRENCY clients, read ratio $READ_RATIO, 128-byte values, $DURATION; A = $KV_A, B = $KV_B; A B A B"
declare -A sums
for path in plain client; do
    args=()
    [[ $path == client ]] && args=(--via-client)
    for round in $(seq "$ROUNDS"); do
        for build in a b; do
            base=$A_BASE
            [[ $build == b ]] && base=$B_BASE
            read -r ops p99 errors < <(bench "$base" "${args[@]}")
            printf "  %-6s round %d %s %8s ops/s  p99 %7s ms  errors %s\n" "$path" "$round" \
                "${build^^}" "$ops" "$p99" "$errors"
            sums[$path$build]=$(python3 -c "print(${sums[$path$build]:-0} + $ops)")
        done
    done
    python3 -c "
a, b, n = ${sums[${path}a]}, ${sums[${path}b]}, $ROUNDS
print(f'  $path: A {a / n:.0f} ops/s, B {b / n:.0f} ops/s: A = {a / b:.2f}x B')
"
done
