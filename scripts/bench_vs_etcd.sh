#!/usr/bin/env bash
# kv against etcd on the same machine, in one run: both as 3-node clusters on loopback with
# their durable defaults (fsync before acknowledging), the same wrk load against one node's
# HTTP API of each (kv: node 1, which forwards what it does not lead; etcd: its leader, through
# the JSON gateway), A B A B, for writes (random 16-byte keys, 128-byte values) and for
# linearizable reads (1000 preloaded keys). Prints each run, and the ratios of the means.
#
#   bash scripts/bench_vs_etcd.sh                 # wrk -t2 -c64 -d10s, 2 rounds
#   DURATION=20s ROUNDS=3 CONNECTIONS=64 bash scripts/bench_vs_etcd.sh
#   PARTITIONS=16 bash scripts/bench_vs_etcd.sh
#   KV_NODE_BIN=path/kv-node bash scripts/bench_vs_etcd.sh      # that binary, no build
#   KV_COMPARE=old/kv-node bash scripts/bench_vs_etcd.sh        # also a second kv cluster
#                                                               # ("kv-b") of that binary
#
# Before measuring, each kv cluster settles: every partition has a leader, and the leaders are
# spread evenly over the nodes (leadership balance).
#
# Installs etcd-server and wrk from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PARTITIONS=${PARTITIONS:-16}
KV_BASE=${KV_BASE:-17801}
ETCD_BASE=${ETCD_BASE:-12379}

if ! command -v etcd >/dev/null || ! command -v wrk >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server wrk >/dev/null
fi
if [[ -z ${KV_NODE_BIN:-} ]]; then
    cargo build --release -q -p kv-node -p kv-cli
    KV_NODE_BIN=target/release/kv-node
fi
KV_COMPARE=${KV_COMPARE:-}
source scripts/lib.sh

# --- etcd: 3 members on loopback ---------------------------------------------------------------
ETCD_CLUSTER=""
for i in 1 2 3; do
    ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:$((ETCD_BASE + 10 * i + 1))"
done
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$DIR/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$((ETCD_BASE + 10 * i))" \
        --advertise-client-urls "http://127.0.0.1:$((ETCD_BASE + 10 * i))" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_BASE + 10 * i + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_BASE + 10 * i + 1))" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
        --log-level error >"$DIR/etcd$i.log" 2>&1 &
    PIDS+=($!)
done

# --- kv: 3 nodes (and 3 more of $KV_COMPARE) --------------------------------------------------
start_kv() { # BIN BASE NAME
    local cluster="1=127.0.0.1:$2,2=127.0.0.1:$(($2 + 1)),3=127.0.0.1:$(($2 + 2))"
    for i in 1 2 3; do
        "$1" --id "$i" --listen "127.0.0.1:$(($2 + i - 1))" \
            --data-dir "$DIR/$3-$i" --initial-cluster "$cluster" --partitions "$PARTITIONS" \
            --log warn >"$DIR/$3-$i.log" 2>&1 &
        PIDS+=($!)
    done
}
KV_B_BASE=$((KV_BASE + 100))
start_kv "$KV_NODE_BIN" "$KV_BASE" kv
STORES=(kv etcd)
if [[ -n $KV_COMPARE ]]; then
    start_kv "$KV_COMPARE" "$KV_B_BASE" kv-b
    STORES=(kv kv-b etcd)
fi

wait_for() { # URL [METHOD]
    for _ in $(seq 200); do
        curl -sf -X "${2:-GET}" "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    exit 1
}
for i in 1 2 3; do wait_for "http://127.0.0.1:$((KV_BASE + i - 1))/ready"; done
if [[ -n $KV_COMPARE ]]; then
    for i in 1 2 3; do wait_for "http://127.0.0.1:$((KV_B_BASE + i - 1))/ready"; done
fi
for i in 1 2 3; do wait_for "http://127.0.0.1:$((ETCD_BASE + 10 * i))/health"; done

# etcd's leader: the member whose id the members report as leader.
ETCD_URL=$(python3 - "$ETCD_BASE" <<'EOF'
import json, sys, urllib.request
base = int(sys.argv[1])
urls = [f"http://127.0.0.1:{base + 10 * i}" for i in (1, 2, 3)]
def status(url):
    req = urllib.request.Request(url + "/v3/maintenance/status", data=b"{}", method="POST")
    return json.load(urllib.request.urlopen(req, timeout=5))
for _ in range(100):
    leaders = {status(u)["leader"] for u in urls}
    if len(leaders) == 1:
        leader = leaders.pop()
        for u in urls:
            if status(u)["header"]["member_id"] == leader:
                print(u)
                sys.exit(0)
    import time; time.sleep(0.1)
sys.exit("etcd has no leader")
EOF
)
KV_URL="http://127.0.0.1:$KV_BASE"
KV_B_URL="http://127.0.0.1:$KV_B_BASE"
settle() { # URL: every partition has a leader, spread evenly over the nodes, within 30 s
    python3 - "$1" <<'EOF'
import json, sys, time, urllib.request
deadline = time.time() + 30
while time.time() < deadline:
    try:
        s = json.load(urllib.request.urlopen(sys.argv[1] + "/v1/cluster", timeout=5))
        groups = [g for g in s["groups"] if g.get("partition") is not None]
        leaders = [g.get("leader") for g in groups]
        counts = [leaders.count(m["id"]) for m in s["members"]]
        if groups and None not in leaders and max(counts) - min(counts) <= 1:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
print("warning: partition leaders not spread evenly after 30 s", file=sys.stderr)
EOF
}
settle "$KV_URL"
if [[ -n $KV_COMPARE ]]; then settle "$KV_B_URL"; fi
echo "etcd $(etcd --version | head -1 | awk '{print $3}') leader at $ETCD_URL; kv node 1 at $KV_URL ($PARTITIONS partitions)"

# --- wrk scripts ---------------------------------------------------------------------------------
cat >"$DIR/common.lua" <<'EOF'
local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
    return ((data:gsub('.', function(x)
        local r, b = '', x:byte()
        for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
        return r
    end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
        if #x < 6 then return '' end
        local c = 0
        for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
        return b64chars:sub(c + 1, c + 1)
    end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
local hex = '0123456789abcdef'
function random_key()
    local t = {}
    for i = 1, 16 do local n = math.random(1, 16); t[i] = hex:sub(n, n) end
    return table.concat(t)
end
value = string.rep('v', 128)
value64 = b64(value)
function init(args) math.randomseed(os.time() + math.random(1, 1000000)) end
EOF
cat >"$DIR/kv_write.lua" <<EOF
dofile("$DIR/common.lua")
request = function() return wrk.format("PUT", "/v1/kv/" .. random_key(), nil, value) end
EOF
cat >"$DIR/etcd_write.lua" <<EOF
dofile("$DIR/common.lua")
request = function()
    return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"},
        '{"key":"' .. b64(random_key()) .. '","value":"' .. value64 .. '"}')
end
EOF
cat >"$DIR/kv_read.lua" <<EOF
dofile("$DIR/common.lua")
request = function() return wrk.format("GET", "/v1/kv/read/" .. math.random(0, 999)) end
EOF
cat >"$DIR/etcd_read.lua" <<EOF
dofile("$DIR/common.lua")
keys = {}
for i = 0, 999 do keys[i] = b64("read/" .. i) end
request = function()
    return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"},
        '{"key":"' .. keys[math.random(0, 999)] .. '"}')
end
EOF

# 1000 keys in each store for the read runs.
python3 - "$KV_URL" "$ETCD_URL" ${KV_COMPARE:+"$KV_B_URL"} <<'EOF'
import base64, http.client, json, sys, urllib.parse
def conn(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=10)
kvs, etcd = [conn(u) for u in [sys.argv[1]] + sys.argv[3:]], conn(sys.argv[2])
v = "v" * 128
for i in range(1000):
    for kv in kvs:
        kv.request("PUT", f"/v1/kv/read/{i}", body=v)
        r = kv.getresponse(); r.read(); assert r.status == 200, r.status
    body = json.dumps({"key": base64.b64encode(f"read/{i}".encode()).decode(),
                       "value": base64.b64encode(v.encode()).decode()})
    etcd.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
    r = etcd.getresponse(); r.read(); assert r.status == 200, r.status
EOF

run() { # NAME URL SCRIPT -> "ops p99_ms"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$3" "$2" >"$DIR/wrk.out" 2>&1
    python3 - "$DIR/wrk.out" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        return float("nan")
    n, unit = m.groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
# The distribution's line, not a "+/- Stdev" share that happens to end in 99%.
found = re.search(r"^\s+99%\s+(\S+)", text, re.M)
p99 = ms(found.group(1)) if found else float("nan")
if p99 != p99:
    # Keep what wrk said when it is not what this expects.
    print(text, file=sys.stderr)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p99:.1f} {errors.group(1) if errors else 0}")
EOF
}

declare -A sums
for workload in write read; do
    echo "== $workload: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, A B A B"
    for round in $(seq "$ROUNDS"); do
        for store in "${STORES[@]}"; do
            case $store in
                kv) url=$KV_URL ;;
                kv-b) url=$KV_B_URL ;;
                etcd) url=$ETCD_URL ;;
            esac
            script="$DIR/${store%-b}_$workload.lua"
            read -r ops p99 errors < <(run "$store" "$url" "$script")
            printf "  round %d %-4s %8s ops/s  p99 %7s ms  non-2xx %s\n" "$round" "$store" "$ops" "$p99" "$errors"
            sums[$store-$workload]=$(python3 -c "print(${sums[$store-$workload]:-0} + $ops)")
            sums[$store-$workload-p99]=$(python3 -c "print(${sums[$store-$workload-p99]:-0} + $p99)")
        done
    done
    for store in "${STORES[@]}"; do
        [[ $store == etcd ]] && continue
        python3 - "${sums[$store-$workload]}" "${sums[etcd-$workload]}" "${sums[$store-$workload-p99]}" \
            "${sums[etcd-$workload-p99]}" "$ROUNDS" "$workload" "$store" <<'EOF'
import sys
kv, etcd, kvp, etcdp = (float(a) for a in sys.argv[1:5])
rounds, w, name = int(sys.argv[5]), sys.argv[6], sys.argv[7]
print(f"  {w}s: {name} {kv / rounds:.0f} ops/s vs etcd {etcd / rounds:.0f} ops/s = {kv / etcd:.2f}x; "
      f"p99 {name} {kvp / rounds:.1f} ms vs etcd {etcdp / rounds:.1f} ms")
EOF
    done
done
