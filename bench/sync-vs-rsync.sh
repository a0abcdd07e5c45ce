#!/usr/bin/env bash
# Config sync against rsync (through a remote-shell wrapper, so it crosses a
# pipe and starts its peer) and `tar -cf - | tar -xf -`, side by side in one
# hyperfine run per scenario:
#   small-nochange  1,000 files (100 B - 4 KB in 50 dirs), nothing changed
#   small-new       the same 1,000 files, all new
#   mixed-new       50 MB mixed (20 x 2 MB + 1,000 small), all new
# qpm is `qpm sync push` through a qrexec-client-vm stand-in that starts
# `qpm-agent serve` (auto-apply, so it measures the full crash-safe apply).
# Usage: bench/sync-vs-rsync.sh [RUNS]   (installs rsync/hyperfine if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v hyperfine >/dev/null || need+=(hyperfine)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release -q -p qpm -p qpm-agent
bin=$PWD/target/release
w=$(mktemp -d /var/tmp/qpm-bench.XXXXXX)
trap 'rm -rf "$w"' EXIT

python3 - "$w" <<'PY'
import os, random, sys
w = sys.argv[1]
random.seed(7)
def tree(name, files):
    for rel, size in files:
        p = os.path.join(w, name, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(os.urandom(size // 2).hex().encode()[:size].ljust(size, b"x"))
small = [(f"d{i % 50}/f{i}.conf", random.randint(100, 4096)) for i in range(1000)]
tree("small", small)
tree("mixed", [(f"big/b{i}.dat", 2 * 1024 * 1024) for i in range(20)] + [(f"s/{r}", s) for r, s in small][:1000])
for name in ("small", "mixed"):
    with open(os.path.join(w, name + ".toml"), "w") as f:
        f.write(f'[[file]]\nsrc = "data"\ndest = "~/data"\nto = ["q"]\n')
PY
for name in small mixed; do
  mkdir -p "$w/repo-$name" && mv "$w/$name" "$w/repo-$name/data" && mv "$w/$name.toml" "$w/repo-$name/qpm-sync.toml"
done
du -sh "$w/repo-mixed/data" | sed 's/^/mixed tree: /'

cat > "$w/rsh" <<'SH'
#!/bin/sh
# rsync remote shell stand-in: drop the host, run the peer locally over the pipe.
shift
exec "$@"
SH
printf 'auto_apply = ["~/"]\ngui = "never"\n' > "$w/agent.toml"
# qrexec-client-vm stand-in: like the rsync one, a shell that execs the
# peer (the variable qrexec would set is set by the shell, not by env(1)).
cat > "$w/qrexec-client-vm" <<SH
#!/bin/sh
QREXEC_REMOTE_DOMAIN=cfg exec $bin/qpm-agent serve --root $w/qube --state $w/qube/home/user/.local/state/qpm-agent --config $w/agent.toml
SH
chmod +x "$w/rsh" "$w/qrexec-client-vm"
export QPM_QREXEC_CLIENT=$w/qrexec-client-vm QPM_SYNC_SOURCE=cfg QPM_SYNC_STATE=$w/sender

reset="rm -rf $w/qube $w/sender $w/rs $w/tar; mkdir -p $w/qube/home/user $w/rs $w/tar"
for name in small mixed; do
  repo=$w/repo-$name
  qpm="$bin/qpm sync push --repo $repo q"
  rs="rsync -a -e $w/rsh $repo/data/ fake:$w/rs/"
  tarp="tar -cf - -C $repo/data . | tar -xf - -C $w/tar"
  if [ $name = small ]; then
    eval "$reset"; $qpm -q; $rs
    hyperfine -N -w 3 -r "$runs" --export-markdown "$w/nochange.md" -n qpm-nochange "$qpm" -n rsync-nochange "$rs"
    cat "$w/nochange.md"
  fi
  hyperfine -w 2 -r "$runs" --export-markdown "$w/$name-new.md" \
    --prepare "$reset" -n "qpm-$name-new" "$qpm" -n "rsync-$name-new" "$rs" -n "tar-$name-new" "$tarp"
  cat "$w/$name-new.md"
done
