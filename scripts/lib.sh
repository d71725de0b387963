# Shared by the scripts in this folder: `source "$(dirname "$0")/lib.sh"` after `cd` to the
# repository root. Gives a scratch directory $DIR and a list $PIDS of background processes,
# both cleaned up when the script exits (killed, then removed).
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

# start_cluster BASE_PORT PARTITIONS: three nodes of $KV_NODE_BIN on 127.0.0.1:BASE_PORT and the
# two ports after it (data and logs under $DIR, pids in PIDS), waited for until each is ready.
start_cluster() {
    local base=$1 partitions=$2 i
    local cluster="1=127.0.0.1:$base,2=127.0.0.1:$((base + 1)),3=127.0.0.1:$((base + 2))"
    for i in 1 2 3; do
        "$KV_NODE_BIN" --id "$i" --listen "127.0.0.1:$((base + i - 1))" --data-dir "$DIR/n$i" \
            --initial-cluster "$cluster" --partitions "$partitions" --log warn >"$DIR/n$i.log" 2>&1 &
        PIDS+=($!)
    done
    for i in 0 1 2; do
        for _ in $(seq 300); do
            curl -sf "http://127.0.0.1:$((base + i))/ready" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
}
