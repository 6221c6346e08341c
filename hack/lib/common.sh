# Shared helpers for hack/ scripts. Sourced, never executed.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(cd "$HACK_DIR/.." && pwd)
# shellcheck source=../versions.env
source "$HACK_DIR/versions.env"

CACHE_DIR=${WAYPOINT_CACHE:-$HOME/.cache/waypoint}
BIN_DIR=$CACHE_DIR/bin
export GOMODCACHE=${GOMODCACHE:-$(go env GOMODCACHE 2>/dev/null || echo "$HOME/go/pkg/mod")}
export GOCACHE=${GOCACHE:-$(go env GOCACHE 2>/dev/null || echo "$HOME/.cache/go-build")}
export GOFLAGS=${GOFLAGS:--mod=mod}
export GOTOOLCHAIN=local

_T0=$(date +%s)
log() { printf '[%4ds] %s\n' "$(( $(date +%s) - _T0 ))" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_cmd() { # need_cmd CMD "how to get it"
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}
kill_tree() { # kill_tree PID SIGNAL: the process and all its descendants
  local pid=$1 sig=$2 child
  for child in $(pgrep -P "$pid" 2>/dev/null); do kill_tree "$child" "$sig"; done
  kill "-$sig" "$pid" 2>/dev/null || true
}
# Background jobs' children (a watch's curl under in_ns) outlive a plain `kill`, and
# keep the caller's stdout open.
kill_jobs() { local j; for j in $(jobs -p); do kill_tree "$j" TERM; done; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, containerd, iptables)"; }

# wait_for TIMEOUT_S "what" CMD...: poll CMD every 0.5 s until it succeeds or time runs out.
wait_for() {
  local timeout=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}
