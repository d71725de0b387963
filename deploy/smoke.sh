#!/usr/bin/env bash
# Smoke test of the docker-compose cluster (deploy/docker-compose.yml), end to end:
#
#   1. build kv-node:local (deploy/build-image.sh) and start three nodes under a project name
#      of its own, on free host ports, so it never touches a cluster you are running;
#   2. wait for /ready and the Docker healthcheck on every node;
#   3. write and read keys through every node;
#   4. `docker kill` the node leading the most partitions: every partition still takes writes;
#      `docker start` it: it catches up (stale reads on it return what was written meanwhile);
#   5. `docker network disconnect` the node leading the most partitions: the other two keep
#      serving every partition, a write sent to the cut-off node fails with 503 (not a hang);
#      `docker network connect` it again: it catches up;
#   6. start node4 and node5 (profile grow): they join, partitions move onto them, and they
#      read every earlier write;
#   7. node5 leaves (`DELETE /v1/cluster/nodes/5`): the answer comes once its partitions moved
#      off it; it is stopped and every earlier write still reads through the other four;
#   8. tear everything down (`down -v --remove-orphans`, also on failure or Ctrl-C) and check
#      that no container, network or volume of the project is left;
#   9. run deploy/smoke-tls.sh: the TLS variant (docker-compose.tls.yml) on the same image.
#
# Every wait has a deadline. Prints `smoke: PASS` last on success; exits non-zero otherwise.
#
#   bash deploy/smoke.sh
#   SMOKE_SKIP_BUILD=1 bash deploy/smoke.sh        # reuse an existing kv-node:local
#   COMPOSE="docker compose" bash deploy/smoke.sh  # default: docker-compose, else docker compose
set -euo pipefail
cd "$(dirname "$0")/.."

started_ms=$(date +%s%3N)
elapsed() {
    local now
    now=$(date +%s%3N)
    printf '%d.%01d' $(((now - started_ms) / 1000)) $((((now - started_ms) % 1000) / 100))
}
log() { printf '[smoke %6ss] %s\n' "$(elapsed)" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

for tool in docker curl python3; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info failed)"
if [[ -n "${COMPOSE:-}" ]]; then
    read -ra compose <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    fail "neither docker-compose nor docker compose is installed"
fi

# Lower-case letters and digits only: compose v1 and v2 normalize project names differently.
project="kvsmoke$$$(date +%s)"
run_tag=$project
work=$(mktemp -d "${TMPDIR:-/tmp}/kv-smoke.XXXXXX")
up=0

# --profile grow makes node4/node5 known to every command (so `down` removes them too); `up`
# names the services it starts.
dc() { "${compose[@]}" --project-name "$project" --file deploy/docker-compose.yml --profile grow "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((up)); then
        if ((rc != 0)); then
            log "last log lines of every node:"
            dc logs --no-color --tail 30
        fi
        # Stop first to see how each node shut down: 0 is graceful, 137 is killed at the timeout.
        local t0 codes="" n cid
        t0=$(date +%s%3N)
        dc stop --timeout 10 >"$work/down.log" 2>&1 || cat "$work/down.log"
        for n in 1 2 3 4 5; do
            cid=$(cid_of "$n" 2>/dev/null)
            [[ -n "$cid" ]] && codes+=" node$n=$(docker inspect -f '{{.State.ExitCode}}' "$cid")"
        done
        log "stopped the nodes in $((($(date +%s%3N) - t0))) ms; exit codes:$codes"
        if [[ $codes == *=137* ]]; then
            log "warning: a node did not finish its graceful shutdown within 10 s and was killed"
        fi
        log "tearing down: ${compose[*]} -p $project down -v --remove-orphans"
        dc down --volumes --remove-orphans --timeout 10 >"$work/down.log" 2>&1 || cat "$work/down.log"
        local filter="label=com.docker.compose.project=$project" left
        left="$(docker ps -aq --filter "$filter") $(docker network ls -q --filter "$filter")"
        left+=" $(docker volume ls -q --filter "$filter")"
        if [[ -n "${left// /}" ]]; then
            log "FAIL: left behind after down: $left"
            rc=1
        else
            log "nothing left behind (no container, network or volume labelled $project)"
        fi
    fi
    rm -rf "$work"
    if ((rc == 0)); then
        log "the TLS variant: deploy/smoke-tls.sh"
        bash deploy/smoke-tls.sh || rc=1
    fi
    if ((rc == 0)); then
        echo "smoke: PASS ($(elapsed)s)"
    else
        echo "smoke: FAIL ($(elapsed)s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers ---------------------------------------------------------------------------------

# req METHOD PORT PATH [BODY]: one HTTP request (curl, --max-time ${REQ_TIMEOUT:-5}); sets CODE
# (000 when no answer) and BODY, and keeps the answer's headers for hdr.
req() {
    local method=$1 port=$2 path=$3
    local args=(--silent --output "$work/body" --dump-header "$work/headers"
        --write-out '%{http_code}' --max-time "${REQ_TIMEOUT:-5}" --request "$method")
    if (($# > 3)); then
        args+=(--data-binary "$4")
    fi
    rm -f "$work/body" "$work/headers"
    CODE=$(curl "${args[@]}" "http://127.0.0.1:$port$path") || CODE=${CODE:-000}
    [[ -n "$CODE" ]] || CODE=000
    BODY=$(cat "$work/body" 2>/dev/null || true)
}

# hdr NAME: a header of the last answer (case-insensitive name), empty when absent.
hdr() {
    [[ -f "$work/headers" ]] || return 0
    tr -d '\r' <"$work/headers" | awk -v name="${1,,}:" 'tolower($1) == name { v = $2 } END { print v }'
}

# wait_until SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.3 s until it succeeds; fail
# with DESCRIPTION at the deadline.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$(($(date +%s%3N) + limit * 1000))
    until "$@"; do
        if (($(date +%s%3N) > deadline)); then
            fail "timed out after ${limit}s waiting for: $what"
        fi
        sleep 0.3
    done
}

port_of() {
    local var="KV_PORT_$1"
    echo "${!var}"
}
cid_of() { dc ps -q "node$1"; }
is_ready() {
    req GET "$(port_of "$1")" /ready
    [[ $CODE == 200 ]]
}
is_healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$(cid_of "$1")") == healthy ]]; }
all_ready() { is_ready 1 && is_ready 2 && is_ready 3; }
all_healthy() { is_healthy 1 && is_healthy 2 && is_healthy 3; }

# cluster_view NODE: GET /v1/cluster on NODE; writes "partition leader role" lines to
# $work/leaders and "partitions members top_leader top_count per-node-counts" to $work/view.
# Fails while some partition has no leader in NODE's view.
cluster_view() {
    curl -sf --max-time 5 "http://127.0.0.1:$(port_of "$1")/v1/cluster" >"$work/cluster.json" || return 1
    python3 - "$work/cluster.json" "$work/leaders" "$work/view" <<'PY'
import collections, json, sys
status = json.load(open(sys.argv[1]))
groups = [g for g in status["groups"] if g.get("partition") is not None]
if len(groups) != status["partitions"] or any(not g.get("leader") for g in groups):
    sys.exit(1)
with open(sys.argv[2], "w") as out:
    for g in groups:
        out.write(f'{g["partition"]} {g["leader"]} {g["role"]}\n')
counts = collections.Counter(g["leader"] for g in groups)
top, n = max(sorted(counts.items()), key=lambda kv: kv[1])
with open(sys.argv[3], "w") as out:
    print(status["partitions"], len(status["members"]), top, n,
          ",".join(f"node{k}:{v}" for k, v in sorted(counts.items())), file=out)
PY
}

# write_until SECONDS KEY VALUE NODE...: PUT KEY=VALUE, rotating over NODEs, until one answers
# 200; fails at the deadline. Sets ATTEMPTS, PARTITION (from X-KV-Partition) and FAILED (the
# failed attempts: node:status/milliseconds).
write_until() {
    local limit=$1 key=$2 value=$3
    shift 3
    local nodes=("$@") deadline=$(($(date +%s%3N) + limit * 1000)) t0
    ATTEMPTS=0
    FAILED=""
    while :; do
        local node=${nodes[$((ATTEMPTS % ${#nodes[@]}))]}
        ATTEMPTS=$((ATTEMPTS + 1))
        t0=$(date +%s%3N)
        # Long enough to see the server's own answer: it may forward for 2x its request timeout.
        REQ_TIMEOUT=15 req PUT "$(port_of "$node")" "/v1/kv/$key" "$value"
        if [[ $CODE == 200 ]]; then
            PARTITION=$(hdr x-kv-partition)
            return 0
        fi
        FAILED+=" node$node:$CODE/$(($(date +%s%3N) - t0))ms"
        if (($(date +%s%3N) > deadline)); then
            fail "PUT $key kept failing for ${limit}s (last: node$node answered $CODE $BODY)"
        fi
        sleep 0.2
    done
}

# stale_matches NODE KEY VALUE: NODE's own replica (X-KV-Node) has KEY=VALUE.
stale_matches() {
    req GET "$(port_of "$1")" "/v1/kv/$2?consistency=stale"
    [[ $CODE == 200 && $BODY == "$3" && $(hdr x-kv-node) == "$1" ]]
}

# caught_up NODE PREFIX: NODE's replica holds PREFIX-<p> for the key of every partition p.
caught_up() {
    local p
    for p in "${!pkey[@]}"; do
        stale_matches "$1" "${pkey[$p]}" "$2-$p-$run_tag" || return 1
    done
}

# --- 1. image and cluster ----------------------------------------------------------------------

if [[ "${SMOKE_SKIP_BUILD:-0}" == 1 ]]; then
    log "SMOKE_SKIP_BUILD=1: using the existing kv-node:local"
    docker image inspect kv-node:local >/dev/null 2>&1 || fail "there is no kv-node:local image"
else
    log "building kv-node:local (deploy/build-image.sh)"
    bash deploy/build-image.sh >"$work/build.log" 2>&1 || {
        tail -40 "$work/build.log"
        fail "deploy/build-image.sh failed"
    }
fi
log "image: $(docker images --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' kv-node:local)"

# Five free ports on 127.0.0.1, chosen by the kernel (node4/node5 join at the end).
read -r KV_PORT_1 KV_PORT_2 KV_PORT_3 KV_PORT_4 KV_PORT_5 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
export KV_PORT_1 KV_PORT_2 KV_PORT_3 KV_PORT_4 KV_PORT_5
log "starting project $project with ${compose[*]}: node1..3 on 127.0.0.1:$KV_PORT_1,$KV_PORT_2,$KV_PORT_3"
up=1
dc up -d node1 node2 node3 >"$work/up.log" 2>&1 || {
    cat "$work/up.log"
    fail "${compose[*]} up failed"
}

wait_until 60 "GET /ready = 200 on all three nodes" all_ready
log "all three nodes ready (every hosted partition has a leader)"
wait_until 60 "Docker healthcheck (kv bench against /health) healthy on all three nodes" all_healthy
log "Docker reports all three containers healthy"

# --- 2. reads and writes through every node ----------------------------------------------------

for n in 1 2 3; do
    key="smoke/hello/$n"
    value="hello from node$n $run_tag"
    req PUT "$(port_of "$n")" "/v1/kv/$key" "$value"
    [[ $CODE == 200 ]] || fail "PUT $key via node$n answered $CODE $BODY"
    for m in 1 2 3; do
        req GET "$(port_of "$m")" "/v1/kv/$key"
        [[ $CODE == 200 && $BODY == "$value" ]] || fail "GET $key via node$m answered $CODE '$BODY'"
    done
done
log "wrote a key through each node and read all three back through every node (linearizable)"

wait_until 30 "GET /v1/cluster on node1 showing a leader for every partition" cluster_view 1
read -r partitions members top top_count counts <"$work/view"
[[ $members == 3 ]] || fail "node1 sees $members members, not 3"
log "cluster: $members members, $partitions partitions, leaders $counts"

# One key per partition, learned from X-KV-Partition; writes rotate over the nodes.
declare -A pkey=()
for ((i = 0; ${#pkey[@]} < partitions && i < partitions * 40; i++)); do
    key="smoke/cov/$i/0"
    write_until 10 "$key" "initial-$i" $((i % 3 + 1))
    [[ -n "$PARTITION" ]] || fail "PUT $key answered without X-KV-Partition"
    [[ -n "${pkey[$PARTITION]:-}" ]] || pkey[$PARTITION]=$key
done
((${#pkey[@]} == partitions)) || fail "$i keys covered only ${#pkey[@]} of $partitions partitions"
log "found one key in each of the $partitions partitions ($i keys written)"

# --- 3. crash: docker kill the busiest leader ---------------------------------------------------

victim=$top
survivors=()
for n in 1 2 3; do ((n == victim)) || survivors+=("$n"); done
log "docker kill node$victim (leads $top_count of $partitions partitions)"
docker kill "$(cid_of "$victim")" >/dev/null
kill_ms=$(date +%s%3N)
max_attempts=0 worst_failed=""
for p in "${!pkey[@]}"; do
    write_until 30 "${pkey[$p]}" "while-down-$p-$run_tag" "${survivors[@]}"
    [[ $PARTITION == "$p" ]] || fail "${pkey[$p]} was served by partition $PARTITION, not $p"
    if ((ATTEMPTS > max_attempts)); then max_attempts=$ATTEMPTS worst_failed=$FAILED; fi
done
[[ $(docker inspect -f '{{.State.Running}}' "$(cid_of "$victim")") == false ]] ||
    fail "node$victim is running again: the writes were not all made while it was down"
log "all $partitions partitions accepted a write via node${survivors[0]}/node${survivors[1]} within $((($(date +%s%3N) - kill_ms))) ms of the kill (at most $max_attempts attempts for one key; its failures:${worst_failed:- none})"
for p in "${!pkey[@]}"; do
    req GET "$(port_of "${survivors[1]}")" "/v1/kv/${pkey[$p]}"
    [[ $CODE == 200 && $BODY == "while-down-$p-$run_tag" ]] ||
        fail "linearizable GET ${pkey[$p]} via node${survivors[1]}: $CODE '$BODY'"
done
log "linearizable reads via node${survivors[1]} return every value written while node$victim was down"

log "docker start node$victim"
docker start "$(cid_of "$victim")" >/dev/null
start_ms=$(date +%s%3N)
wait_until 60 "node$victim ready after its restart" is_ready "$victim"
wait_until 30 "node$victim's replica holding the writes made while it was down" caught_up "$victim" while-down
log "node$victim is back: ready, and its stale reads (X-KV-Node: $victim) return all $partitions values written while it was down, $((($(date +%s%3N) - start_ms))) ms after docker start"

# --- 4. network partition: cut the busiest leader off ------------------------------------------

wait_until 30 "every node ready after the restart" all_ready
wait_until 30 "GET /v1/cluster on node$victim showing a leader for every partition" cluster_view "$victim"
read -r _ _ cut cut_count counts <"$work/view"
cut_cid=$(cid_of "$cut")
network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$cut_cid")
network=${network%% *}
[[ -n "$network" ]] || fail "node$cut is on no network"
wait_until 30 "GET /v1/cluster on node$cut showing a leader for every partition" cluster_view "$cut"
led=$(awk '$3 == "leader" { print $1; exit }' "$work/leaders")
followed=$(awk '$3 != "leader" { print $1; exit }' "$work/leaders")
majority=()
for n in 1 2 3; do ((n == cut)) || majority+=("$n"); done
log "leaders now $counts; docker network disconnect $network node$cut (it leads $cut_count partitions)"
docker network disconnect "$network" "$cut_cid"
cut_ms=$(date +%s%3N)

# The cut-off node's published port goes away with its network, so the write is sent from
# inside its container, with the kv binary of the image: `kv bench` sends plain PUTs and
# reports the HTTP status of each.
cut_write() { # PARTITION DESCRIPTION
    local key=${pkey[$1]} t0 report rc=0
    t0=$(date +%s%3N)
    # kv bench exits 0 after a run with failed requests; its JSON report counts them.
    report=$(timeout 40 docker exec "$cut_cid" /kv --timeout 15s --json bench --requests 1 \
        --concurrency 1 --keys 1 --key-prefix "${key%0}") || rc=$?
    ((rc != 124)) || fail "PUT $key sent to the cut-off node$cut hung for 40 s"
    local took=$(($(date +%s%3N) - t0))
    local kinds
    kinds=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ok"], json.dumps(r["error_kinds"], sort_keys=True))' "$report") ||
        fail "unexpected kv bench output: $report"
    [[ $kinds == '0 {"http_503": 1}' ]] ||
        fail "PUT $key (partition $1, $2) sent to the cut-off node$cut: expected one 503, got ok/errors $kinds"
    log "PUT $key (partition $1, $2) sent to cut-off node$cut: 503 after ${took} ms"
}
max_attempts=0 worst_failed=""
for p in "${!pkey[@]}"; do
    write_until 30 "${pkey[$p]}" "while-cut-$p-$run_tag" "${majority[@]}"
    if ((ATTEMPTS > max_attempts)); then max_attempts=$ATTEMPTS worst_failed=$FAILED; fi
done
log "majority node${majority[0]}/node${majority[1]} took a write in every partition within $((($(date +%s%3N) - cut_ms))) ms of the cut (at most $max_attempts attempts for one key; its failures:${worst_failed:- none})"
if [[ -n "$led" ]]; then cut_write "$led" "node$cut led it before the cut"; fi
if [[ -n "$followed" ]]; then cut_write "$followed" "node$cut followed before the cut"; fi
for n in "${majority[@]}"; do
    wait_until 30 "node$n ready while node$cut is cut off" is_ready "$n"
done
log "node${majority[0]} and node${majority[1]} stay ready while node$cut is cut off"

log "docker network connect $network node$cut"
docker network connect --alias "node$cut" "$network" "$cut_cid"
connect_ms=$(date +%s%3N)
wait_until 60 "node$cut ready after reconnecting" is_ready "$cut"
wait_until 30 "node$cut's replica holding the writes made while it was cut off" caught_up "$cut" while-cut
log "node$cut caught up: its stale reads return all $partitions values written while it was cut off, $((($(date +%s%3N) - connect_ms))) ms after reconnecting"

wait_until 30 "every node ready at the end" all_ready
for n in 1 2 3; do
    for p in "${!pkey[@]}"; do
        req GET "$(port_of "$n")" "/v1/kv/${pkey[$p]}"
        [[ $CODE == 200 && $BODY == "while-cut-$p-$run_tag" ]] ||
            fail "final linearizable GET ${pkey[$p]} via node$n: $CODE '$BODY'"
    done
done
log "final check: linearizable reads via every node agree on all $partitions keys"
wait_until 30 "GET /v1/cluster on node$cut showing a leader for every partition" cluster_view "$cut"
read -r _ _ _ _ counts <"$work/view"
log "leaders at the end: $counts"

# --- grow: node4 and node5 join the running cluster (profile grow, KV_JOIN=node1:7001) --------
grow_ms=$(date +%s%3N)
log "grow: starting node4 and node5, which join through node1"
dc up -d node4 node5 >"$work/grow.log" 2>&1 || {
    cat "$work/grow.log"
    fail "starting node4/node5 failed"
}
wait_until 90 "node4 ready after joining" is_ready 4
wait_until 90 "node5 ready after joining" is_ready 5
# settled: 5 members, and every partition's Raft voters are the replicas the new map assigns.
settled() {
    req GET "$KV_PORT_1" /v1/cluster
    [[ $CODE == 200 ]] || return 1
    python3 -c '
import json, sys
s = json.loads(sys.argv[1])
ok = len(s["members"]) == 5 and all(
    sorted(g["replicas"]) == sorted(g["voters"]) for g in s["groups"] if g["partition"] is not None)
moved = sum(1 for g in s["groups"] if g["partition"] is not None and ({4, 5} & set(g["replicas"])))
print(moved)
sys.exit(0 if ok and moved > 0 else 1)' "$BODY" >"$work/moved"
}
wait_until 120 "partitions moved onto node4/node5" settled
log "grow: 5 members; $(cat "$work/moved") partitions gained node4 or node5 and settled within $((($(date +%s%3N) - grow_ms))) ms"
for n in 4 5; do
    for p in "${!pkey[@]}"; do
        req GET "$(port_of "$n")" "/v1/kv/${pkey[$p]}"
        [[ $CODE == 200 && $BODY == "while-cut-$p-$run_tag" ]] ||
            fail "GET ${pkey[$p]} via joined node$n: $CODE '$BODY'"
    done
done
log "grow: the joined nodes read every earlier write"

# --- shrink: node5 leaves (drained through node2), then it is stopped ---------------------------
leave_ms=$(date +%s%3N)
leave_node5() {
    REQ_TIMEOUT=100 req DELETE "$KV_PORT_2" "/v1/cluster/nodes/5?wait=90s"
    [[ $CODE != 503 ]] # 503: the metadata group is electing a leader; ask again
}
wait_until 30 "an answer to node5's leave" leave_node5
[[ $CODE == 200 && $BODY == *'"status":"removed"'* ]] || fail "node5 leave: $CODE '$BODY'"
log "shrink: node5 drained and removed in $((($(date +%s%3N) - leave_ms))) ms"
dc stop node5 >/dev/null 2>&1 || fail "stopping node5 failed"
for n in 1 4; do
    for p in "${!pkey[@]}"; do
        req GET "$(port_of "$n")" "/v1/kv/${pkey[$p]}"
        [[ $CODE == 200 && $BODY == "while-cut-$p-$run_tag" ]] ||
            fail "GET ${pkey[$p]} via node$n after node5 left: $CODE '$BODY'"
    done
done
log "shrink: four nodes serve every earlier write"
