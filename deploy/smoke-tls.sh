#!/usr/bin/env bash
# Smoke test of the TLS variant (deploy/docker-compose.tls.yml): certificates made with
# `kv cert` (deploy/make-certs.sh) into a temporary directory, three nodes under a project name
# of their own on free host ports; every node becomes ready and healthy over HTTPS, a write
# through one node reads back through the others (peers forward and replicate over mTLS),
# `kv` inside a container works with --cacert, and plain HTTP to a TLS port gets no answer.
# Tears everything down (also on failure) and prints `smoke-tls: PASS` last.
#
#   bash deploy/smoke-tls.sh          # needs the kv-node:local image (deploy/build-image.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[smoke-tls] %s\n' "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}
if [[ -n "${COMPOSE:-}" ]]; then
    read -ra compose <<<"$COMPOSE"
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    compose=(docker compose)
fi
docker image inspect kv-node:local >/dev/null 2>&1 || fail "there is no kv-node:local image"
project="kvsmoketls$$$(date +%s)"
work=$(mktemp -d "${TMPDIR:-/tmp}/kv-smoke-tls.XXXXXX")
export KV_CERTS="$work/certs"
dc() { "${compose[@]}" --project-name "$project" --file deploy/docker-compose.tls.yml "$@"; }
cleanup() {
    local rc=$?
    set +e
    if ((rc != 0)); then dc logs --no-color --tail 30; fi
    dc down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
    rm -rf "$work"
    if ((rc == 0)); then echo "smoke-tls: PASS"; else echo "smoke-tls: FAIL"; fi
    exit "$rc"
}
trap cleanup EXIT

bash deploy/make-certs.sh >/dev/null
read -r KV_PORT_1 KV_PORT_2 KV_PORT_3 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
export KV_PORT_1 KV_PORT_2 KV_PORT_3
dc up -d node1 node2 node3 >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "up failed"; }
ca="$KV_CERTS/ca.crt"
curl_tls() { curl --silent --show-error --max-time 5 --cacert "$ca" "$@"; }

deadline=$(($(date +%s) + 90))
for port in $KV_PORT_1 $KV_PORT_2 $KV_PORT_3; do
    until [[ $(curl_tls -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/ready" 2>/dev/null) == 200 ]]; do
        (($(date +%s) < deadline)) || fail "node on port $port not ready over HTTPS"
        sleep 0.5
    done
done
log "three nodes ready over HTTPS"
for n in 1 2 3; do
    until [[ $(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q "node$n")") == healthy ]]; do
        (($(date +%s) < deadline)) || fail "node$n never healthy (the healthcheck uses kv --cacert)"
        sleep 0.5
    done
done
log "docker healthchecks pass (kv --cacert inside the containers)"

value="tls-$project"
for i in 1 2 3 4 5 6 7 8; do
    code=$(curl_tls -o /dev/null -w '%{http_code}' -X PUT --data-binary "$value-$i" \
        "https://127.0.0.1:$KV_PORT_1/v1/kv/smoke/$i") || code=000
    [[ $code == 200 ]] || fail "PUT smoke/$i via node1 answered $code"
done
for port in $KV_PORT_2 $KV_PORT_3; do
    for i in 1 2 3 4 5 6 7 8; do
        got=$(curl_tls "https://127.0.0.1:$port/v1/kv/smoke/$i") || fail "GET smoke/$i via $port"
        [[ $got == "$value-$i" ]] || fail "GET smoke/$i via $port: '$got'"
    done
done
log "writes through node1 read back through node2 and node3 (forwarding and replication over mTLS)"
got=$(dc exec -T node3 /kv --endpoints https://127.0.0.1:7001 --cacert /certs/ca.crt get smoke/1) ||
    fail "kv get inside node3"
[[ $got == "$value-1" ]] || fail "kv get inside node3: '$got'"
log "kv --cacert inside a container reads the value"
if curl --silent --max-time 3 "http://127.0.0.1:$KV_PORT_1/health" >/dev/null 2>&1; then
    fail "plain HTTP to the TLS port was answered"
fi
log "plain HTTP to a TLS port gets no answer"
