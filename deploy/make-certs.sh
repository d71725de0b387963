#!/usr/bin/env bash
# Certificates for the TLS cluster of docker-compose.tls.yml, made with `kv cert`: one CA
# (deploy/certs/ca.crt) and a certificate per node (node-N.crt, for the names node1..node5,
# localhost and 127.0.0.1), which serves clients and proves the node to its peers.
#
#   bash deploy/make-certs.sh                  # into deploy/certs, keeps files that exist
#   KV_CERTS=/some/dir bash deploy/make-certs.sh
#
# The containers run as uid 10001, which must read the keys: as root this script gives them to
# that uid (mode 0600); otherwise it makes them readable by all (0644), which is fine for a
# local cluster and not for anything else.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${KV_CERTS:-deploy/certs}
kv=${KV_BIN:-}
if [[ -z "$kv" ]]; then
    for candidate in target/docker/x86_64-unknown-linux-gnu/release/kv target/release/kv; do
        [[ -x $candidate ]] && kv=$candidate && break
    done
fi
if [[ -z "$kv" ]]; then
    cargo build --release -q -p kv-cli
    kv=target/release/kv
fi
mkdir -p "$dir"
[[ -f $dir/ca.crt ]] || "$kv" cert create-ca --dir "$dir"
for n in 1 2 3 4 5; do
    [[ -f $dir/node-$n.crt ]] ||
        "$kv" cert create-node --id "$n" --host "node$n" --host localhost --host 127.0.0.1 --dir "$dir"
done
if [[ $(id -u) == 0 ]]; then
    chown 10001:10001 "$dir"/node-*.key
else
    chmod 0644 "$dir"/node-*.key
fi
echo "make-certs: CA and node certificates in $dir"
