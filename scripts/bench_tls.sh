#!/usr/bin/env bash
# Write throughput with TLS on versus off, in one run: two 3-node clusters of the same binary on
# loopback, one plain, one with client TLS and peer mTLS (certificates made here with
# `kv cert`), the same `kv bench` load (64 writers, 128-byte values, through plain HTTP to node
# 1) against each, A B A B. Prints each run and the ratio of the means.
#
#   bash scripts/bench_tls.sh
#   DURATION=20s ROUNDS=3 bash scripts/bench_tls.sh
#   KV_BIN_DIR=path/with/kv-node-and-kv bash scripts/bench_tls.sh   # those binaries, no build
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-64}
PARTITIONS=${PARTITIONS:-16}
PLAIN_BASE=${PLAIN_BASE:-17901}
TLS_BASE=${TLS_BASE:-18001}
if [[ -z ${KV_BIN_DIR:-} ]]; then
    cargo build --release -q -p kv-node -p kv-cli
    KV_BIN_DIR=target/release
fi
NODE=$KV_BIN_DIR/kv-node
KV=$KV_BIN_DIR/kv
source scripts/lib.sh

"$KV" cert create-ca --dir "$DIR/certs" >/dev/null
for i in 1 2 3; do
    "$KV" cert create-node --dir "$DIR/certs" --id "$i" --host 127.0.0.1 --host localhost >/dev/null
done

start() { # BASE NAME [TLS]
    local cluster="1=127.0.0.1:$1,2=127.0.0.1:$(($1 + 1)),3=127.0.0.1:$(($1 + 2))"
    for i in 1 2 3; do
        local tls=()
        if [[ ${3:-} == tls ]]; then
            tls=(--cert-file "$DIR/certs/node-$i.crt" --key-file "$DIR/certs/node-$i.key"
                --peer-cert-file "$DIR/certs/node-$i.crt" --peer-key-file "$DIR/certs/node-$i.key"
                --peer-trusted-ca-file "$DIR/certs/ca.crt")
        fi
        "$NODE" --id "$i" --listen "127.0.0.1:$(($1 + i - 1))" --data-dir "$DIR/$2-$i" \
            --initial-cluster "$cluster" --partitions "$PARTITIONS" --log warn "${tls[@]}" \
            >"$DIR/$2-$i.log" 2>&1 &
        PIDS+=($!)
    done
}
start "$PLAIN_BASE" plain
start "$TLS_BASE" tls tls

wait_ready() { # URL [CURL ARGS...]
    local url=$1
    shift
    for _ in $(seq 300); do
        curl -sf "$@" "$url/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out waiting for $url/ready" >&2
    exit 1
}
for i in 0 1 2; do
    wait_ready "http://127.0.0.1:$((PLAIN_BASE + i))"
    wait_ready "https://127.0.0.1:$((TLS_BASE + i))" --cacert "$DIR/certs/ca.crt"
done

bench() { # ENDPOINT [KV ARGS...] -> "ops p99_ms errors"
    local endpoint=$1
    shift
    "$KV" bench --endpoints "$endpoint" "$@" --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --value-size 128 --read-ratio 0 --json >"$DIR/bench.json"
    python3 - "$DIR/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['ops_per_sec']:.0f} {(r['latency_ms'] or {}).get('p99', 0):.1f} {r['errors']}")
EOF
}

echo "kv bench: $CONCURRENCY writers, 128-byte values, $DURATION, plain vs TLS (client TLS + peer mTLS), A B A B"
declare -A sums
for round in $(seq "$ROUNDS"); do
    for mode in plain tls; do
        if [[ $mode == plain ]]; then
            read -r ops p99 errors < <(bench "http://127.0.0.1:$PLAIN_BASE")
        else
            read -r ops p99 errors < <(bench "https://127.0.0.1:$TLS_BASE" --cacert "$DIR/certs/ca.crt")
        fi
        printf "  round %d %-5s %8s writes/s  p99 %7s ms  errors %s\n" "$round" "$mode" "$ops" "$p99" "$errors"
        sums[$mode]=$(python3 -c "print(${sums[$mode]:-0} + $ops)")
    done
done
python3 -c "
plain, tls, n = ${sums[plain]}, ${sums[tls]}, $ROUNDS
print(f'  plain {plain / n:.0f} writes/s, TLS {tls / n:.0f} writes/s: TLS = {tls / plain:.2f}x plain')
"
