#!/usr/bin/env bash
# Install, no-op re-apply and upgrade of the SecureDrop-like example on a
# fresh simulated dom0 with --latency-ms 5 (set up with qpm-dom0 init, so the
# policy goes through the gatekeeper). Prints wall time and Admin API calls.
#
#   cargo build --release -p qpm -p qpm-sim -p qpm-dom0
#   bench/pkg-sim.sh [BIN_DIR (default target/release)] [RUNS (default 5)] [APP (default securedrop-ws)]
#
# With qpm-agent next to the binaries, the simulator's templates receive
# packages' [[files]]; the pushes (qpm.SyncConfig, not Admin API calls) are
# printed apart.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release}")
runs=${2:-5}
app=${3:-securedrop-ws}
work=$(mktemp -d)
trap '"$bin/qpm" sim stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export QPM_TRANSPORT=sim QPM_SIM_BIN="$bin/qpm-sim"

now() { date +%s.%N; }
step() { # label, args...
  local label=$1; shift
  local t0 t1 json out pushes
  t0=$(now)
  json=$("$bin/qpm" --json "$@" 2>/dev/null | tr -d '\n')
  t1=$(now)
  out=$(grep -o '"calls": {[^}]*}' <<<"$json" | tr -dc '0-9 ' | tr -s ' ')
  pushes=$(grep -o '"pushes": [0-9]*' <<<"$json" | tr -dc '0-9' || true)
  printf '%-28s %6.3f s   reads, writes:%s   pushes: %s\n' "$label" "$(echo "$t1 - $t0" | bc)" "$out" "${pushes:--}"
}

for r in $(seq 1 "$runs"); do
  export QPM_SIM="$work/sim$r" QPM_STATE_DIR="$work/state$r"
  "$bin/qpm" sim start --latency-ms 5 >/dev/null
  echo "run $r"
  step "install 1.0.0" install "examples/$app/1.0.0"
  step "no-op re-apply 1.0.0" install "examples/$app/1.0.0"
  step "upgrade 1.0.0 -> 2.0.0" upgrade "examples/$app/2.0.0"
  step "no-op re-apply 2.0.0" install "examples/$app/2.0.0"
  step "remove --purge" remove --purge "$app"
  "$bin/qpm" sim stop >/dev/null
done
