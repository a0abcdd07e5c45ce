#!/usr/bin/env bash
# Config sync against rsync (through a remote-shell wrapper, so it crosses a
# pipe and starts its peer) and `tar -cf - | tar -xf -`, side by side in one
# hyperfine run per scenario:
#   small-nochange  1,000 files (100 B - 4 KB in 50 dirs), nothing changed
#   small-new       the same 1,000 files, all new
#   mixed-new       50 MB mixed (20 x 2 MB + 1,000 small), all new
# qpm is `qpm sync push` through a qrexec-client-vm stand-in that starts
# `qpm-agent serve` (auto-apply, so it measures the full crash-safe apply).
# The binaries are the release build as shipped: static (musl) for
# x86_64-unknown-linux-musl; the no-change run also has the default
# (glibc, dynamically linked) build, and `floor`: two programs that only
# list and stat both trees (crates/qpm-sync/examples/stat_floor.rs).
# Usage: bench/sync-vs-rsync.sh [RUNS]   (installs rsync/hyperfine/musl-tools
# and the musl target if missing; falls back to the glibc build without them)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v musl-gcc >/dev/null || need+=(musl-tools)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || true
fi
musl=x86_64-unknown-linux-musl
rustup target list --installed 2>/dev/null | grep -qx $musl || rustup target add $musl >/dev/null 2>&1 || true
cargo build --release -q -p qpm -p qpm-agent && cargo build --release -q -p qpm-sync --example stat_floor
gbin=$PWD/target/release
if command -v musl-gcc >/dev/null && rustup target list --installed 2>/dev/null | grep -qx $musl &&
  cargo build --release -q --target $musl -p qpm -p qpm-agent &&
  cargo build --release -q --target $musl -p qpm-sync --example stat_floor; then
  bin=$PWD/target/$musl/release
  echo "binaries: static ($musl); qpm-gnu: the default glibc build"
else
  bin=$gbin
  echo "binaries: the default glibc build (no musl toolchain)"
fi
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
        f.write(f'[[file]]\nsrc = "data"\ndest = "~/data"\nto = ["q", "qg"]\n')
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
# Qube `q` runs the measured build, `qg` the default glibc build.
cat > "$w/qrexec-client-vm" <<SH
#!/bin/sh
case "\$2" in
qg) QREXEC_REMOTE_DOMAIN=cfg exec $gbin/qpm-agent serve --root $w/qube-g --state $w/qube-g/home/user/.local/state/qpm-agent --config $w/agent.toml ;;
*) QREXEC_REMOTE_DOMAIN=cfg exec $bin/qpm-agent serve --root $w/qube --state $w/qube/home/user/.local/state/qpm-agent --config $w/agent.toml ;;
esac
SH
cat > "$w/floor-client" <<SH
#!/bin/sh
exec $bin/examples/stat_floor peer $w/qube/home/user/data
SH
chmod +x "$w/rsh" "$w/qrexec-client-vm" "$w/floor-client"
export QPM_QREXEC_CLIENT=$w/qrexec-client-vm QPM_SYNC_SOURCE=cfg QPM_SYNC_STATE=$w/sender

reset="rm -rf $w/qube $w/qube-g $w/sender $w/rs $w/tar; mkdir -p $w/qube/home/user $w/qube-g/home/user $w/rs $w/tar"
for name in small mixed; do
  repo=$w/repo-$name
  qpm="$bin/qpm sync push --repo $repo q"
  rs="rsync -a -e $w/rsh $repo/data/ fake:$w/rs/"
  tarp="tar -cf - -C $repo/data . | tar -xf - -C $w/tar"
  if [ $name = small ]; then
    eval "$reset"; $qpm -q; $rs
    # The floor's message is the size of qpm's manifest for this tree.
    floor="$bin/examples/stat_floor sender $repo/data $w/floor-client 71710"
    gnu=()
    if [ "$bin" != "$gbin" ]; then
      $gbin/qpm sync push --repo $repo qg -q
      gnu=(-n qpm-gnu-nochange "$gbin/qpm sync push --repo $repo qg")
    fi
    hyperfine -N -w 3 -r "$runs" --export-markdown "$w/nochange.md" -n qpm-nochange "$qpm" \
      "${gnu[@]}" -n floor-nochange "$floor" -n rsync-nochange "$rs"
    cat "$w/nochange.md"
  fi
  hyperfine -w 2 -r "$runs" --export-markdown "$w/$name-new.md" \
    --prepare "$reset" -n "qpm-$name-new" "$qpm" -n "rsync-$name-new" "$rs" -n "tar-$name-new" "$tarp"
  cat "$w/$name-new.md"
done
