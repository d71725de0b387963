#!/usr/bin/env bash
# Builds the kv-node:local image without pulling anything: cargo compiles kv-node and kv as
# static glibc binaries on the host (target/docker, so the normal target/ is untouched), and
# `docker build` copies them onto `FROM scratch` from a throw-away build context holding only
# what the image needs.
#
#   bash deploy/build-image.sh            # tag kv-node:local
#   KV_IMAGE=kv-node:dev bash deploy/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

image=${KV_IMAGE:-kv-node:local}
target=x86_64-unknown-linux-gnu
target_dir=${KV_DOCKER_TARGET_DIR:-target/docker}
bin_dir="$target_dir/$target/release"

# --target makes RUSTFLAGS apply to the binaries only, not to build scripts and proc macros
# (which cannot be static). glibc's libc.a must be installed (libc6-dev; glibc-static on Fedora).
echo "build-image: cargo build --release (static glibc, $target) into $target_dir"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
    --target "$target" --target-dir "$target_dir" -p kv-node -p kv-cli --bins

for bin in kv-node kv; do
    # A static binary has no NEEDED entries; a dynamic one would not start in a scratch image.
    if LC_ALL=C readelf -d "$bin_dir/$bin" 2>/dev/null | grep -q '(NEEDED)'; then
        echo "build-image: $bin_dir/$bin is dynamically linked:" >&2
        ldd "$bin_dir/$bin" >&2 || true
        exit 1
    fi
done

context=$(mktemp -d "${TMPDIR:-/tmp}/kv-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
for bin in kv-node kv; do
    # Drop the debug line tables (most of the size); keep symbols for panic backtraces.
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$context/$bin" "$bin_dir/$bin"
    else
        cp "$bin_dir/$bin" "$context/$bin"
    fi
done
cp -R deploy/rootfs "$context/rootfs"
# The `kv` CLI's HTTP client (rustls with the platform verifier) refuses to start without a
# system CA store, so the image carries the host's bundle (kv-node itself needs none).
ca_bundle=""
for candidate in "${KV_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt \
    /etc/ssl/ca-bundle.pem /etc/ssl/cert.pem; do
    if [[ -n "$candidate" && -s "$candidate" ]]; then
        ca_bundle=$candidate
        break
    fi
done
if [[ -z "$ca_bundle" ]]; then
    echo "build-image: no CA certificate bundle found on this host; set KV_CA_BUNDLE=/path/to/bundle.pem" >&2
    exit 1
fi
mkdir -p "$context/rootfs/etc/ssl/certs"
cp "$ca_bundle" "$context/rootfs/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$context/rootfs/tmp" "$context/data"
chmod 1777 "$context/rootfs/tmp"
chmod 0755 "$context/data"

previous=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
echo "build-image: docker build -t $image (context: $(du -sh "$context" | cut -f1))"
docker build --tag "$image" --file deploy/Dockerfile "$context"
# Each rebuild would leave the image it replaced behind, untagged: remove it unless something
# still uses it (another tag, a container).
current=$(docker image inspect --format '{{.Id}}' "$image")
if [[ -n "$previous" && "$previous" != "$current" &&
    $(docker image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null) == 0 ]]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
docker images "$image"
