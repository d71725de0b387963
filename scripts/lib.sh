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
