#!/usr/bin/env bash
# qpm's main job on the simulator, on a fresh machine with only a Rust toolchain:
# builds qpm, starts a fresh simulated dom0 (set up with `qpm-dom0 init`, so package
# policy goes through the gatekeeper), installs the SecureDrop-like example
# (11 qubes, 2 policy files) as one unit, printing the plan and the result, and
# shows what is installed. Run it again to see a no-op re-apply.
#
#   ./demo.sh [PACKAGE]        (default: examples/securedrop-ws/1.0.0)
set -euo pipefail
cd "$(dirname "$0")"
pkg=${1:-examples/securedrop-ws/1.0.0}
echo "==> building qpm, qpm-sim, qpm-dom0, qpm-agent (first time: a few minutes)" >&2
cargo build --quiet --locked --bins
export QPM_SIM=${QPM_SIM:-$PWD/target/demo/sim} QPM_STATE_DIR=${QPM_STATE_DIR:-$PWD/target/demo/state}
export QPM_TRANSPORT=sim
qpm() { target/debug/qpm "$@"; }
if [ ! -e "$QPM_SIM" ]; then
  echo "==> starting a fresh simulated dom0 in $QPM_SIM (5 ms per Admin API call, like qrexec)" >&2
  qpm sim start --latency-ms 5 >&2
fi
echo "==> qpm install $pkg" >&2
qpm install "$pkg"
echo "==> qpm list" >&2
qpm list
echo "==> qpm verify" >&2
qpm verify
app=$(basename "$(dirname "$pkg")")
echo "==> done. Try: qpm plan examples/$app/2.0.0, qpm upgrade ..., qpm remove $app" >&2
echo "    (with QPM_SIM=$QPM_SIM QPM_STATE_DIR=$QPM_STATE_DIR QPM_TRANSPORT=sim target/debug/qpm ...)" >&2
