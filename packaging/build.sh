#!/usr/bin/env bash
# Builds qpm's packages from already built binaries, without cargo plugins:
#   deb (dpkg-deb --build of a staged tree): qpm, qpm-agent    (templates, Debian)
#   rpm (rpmbuild -bb of a staged tree):     qpm, qpm-agent    (templates, Fedora)
#                                            qpm-dom0          (dom0)
# Usage: packaging/build.sh [--bindir DIR] [--out DIR] [--formats deb,rpm]
#   --bindir  where qpm, qpm-agent and qpm-dom0 are (default target/release)
#   --out     where packages go (default target/packages)
#   --formats which formats to build (default: deb,rpm)
#   --fast    light compression (tests)
# The version comes from `qpm --version`; man page and completions from
# `qpm generate man|completions`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bindir=target/release
out=target/packages
formats=deb,rpm
fast=
while [ $# -gt 0 ]; do
  case $1 in
    --bindir) bindir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --formats) formats=$2; shift 2 ;;
    --fast) fast=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for b in qpm qpm-agent qpm-dom0; do
  [ -x "$bindir/$b" ] || { echo "missing binary: $bindir/$b (cargo build --release first)" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
bindir=$(cd "$bindir" && pwd)
version=$("$bindir/qpm" --version | awk '{print $2}')
case $version in ''|*[!0-9A-Za-z.+~-]*) echo "bad version: $version" >&2; exit 2 ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Reproducible metadata: fixed timestamps inside the packages.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}

# Staged trees, one per package: exact paths and modes.
stage_qpm() { # $1 = root, $2 = zsh completion dir
  local r=$1
  install -Dm0755 "$bindir/qpm" "$r/usr/bin/qpm"
  mkdir -p "$r/usr/share/man/man1"
  "$bindir/qpm" generate man | gzip -9n > "$r/usr/share/man/man1/qpm.1.gz"
  chmod 0644 "$r/usr/share/man/man1/qpm.1.gz"
  mkdir -p "$r/usr/share/bash-completion/completions" "$r$2" "$r/usr/share/fish/vendor_completions.d"
  "$bindir/qpm" generate completions bash > "$r/usr/share/bash-completion/completions/qpm"
  "$bindir/qpm" generate completions zsh > "$r$2/_qpm"
  "$bindir/qpm" generate completions fish > "$r/usr/share/fish/vendor_completions.d/qpm.fish"
  chmod 0644 "$r/usr/share/bash-completion/completions/qpm" "$r$2/_qpm" "$r/usr/share/fish/vendor_completions.d/qpm.fish"
  install -Dm0644 "$here/../README.md" "$r/usr/share/doc/qpm/README.md"
}
stage_agent() {
  local r=$1
  install -Dm0755 "$bindir/qpm-agent" "$r/usr/bin/qpm-agent"
  install -Dm0755 "$here/qubes-rpc/qpm.SyncConfig" "$r/etc/qubes-rpc/qpm.SyncConfig"
  install -Dm0644 "$here/rpc-config/qpm.SyncConfig" "$r/etc/qubes/rpc-config/qpm.SyncConfig"
}
stage_dom0() {
  local r=$1 s
  install -Dm0755 "$bindir/qpm-dom0" "$r/usr/bin/qpm-dom0"
  for s in qpm.PolicySubmit qpm.PolicyGet qpm.PolicyRemove; do
    install -Dm0755 "$here/dom0/qubes-rpc/qpm-dom0-service" "$r/etc/qubes-rpc/$s"
  done
}

want() { case ",$formats," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

if want deb; then
  command -v dpkg-deb >/dev/null || { echo "dpkg-deb not found (apt-get install dpkg)" >&2; exit 3; }
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  deb() { # name, stage function, depends, description
    local name=$1 root=$work/deb-$1
    "$2" "$root" /usr/share/zsh/vendor-completions
    mkdir -p "$root/DEBIAN"
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat > "$root/DEBIAN/control" <<CTRL
Package: $name
Version: $version
Architecture: $arch
Maintainer: qpm maintainers <qpm@example.invalid>
Installed-Size: $size
Depends: $3
Section: admin
Priority: optional
Homepage: https://example.invalid/qpm
Description: $4
CTRL
    if [ -d "$root/etc" ]; then
      (cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
    fi
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    local z=(-Zxz)
    [ -n "$fast" ] && z=(-Zgzip -z1)
    dpkg-deb --root-owner-group "${z[@]}" --build "$root" "$out/${name}_${version}_${arch}.deb" >/dev/null
    echo "$out/${name}_${version}_${arch}.deb"
  }
  deb qpm stage_qpm 'libc6 (>= 2.34)' 'multi-qube application packages for Qubes OS (CLI)
 qpm installs, upgrades and removes multi-qube applications as one unit from
 a management qube through the Qubes Admin API, from signed repositories.'
  deb qpm-agent stage_agent 'libc6 (>= 2.34)' 'qpm configuration receiver for Qubes OS templates
 The qpm.SyncConfig qrexec service: receives configuration pushed from the
 config qube, shows what changes and applies it with the user'"'"'s consent.'
fi

if want rpm; then
  command -v rpmbuild >/dev/null || { echo "rpmbuild not found (apt-get install rpm / dnf install rpm-build)" >&2; exit 3; }
  rpm() { # name, stage function, summary, description, files
    local name=$1 top=$work/rpm-$1
    mkdir -p "$top"/{BUILD,RPMS,SPECS,SRPMS,STAGE}
    "$2" "$top/STAGE" /usr/share/zsh/site-functions
    cat > "$top/SPECS/$name.spec" <<SPEC
%define debug_package %{nil}
%define __os_install_post %{nil}
%define _build_id_links none
Name: $name
Version: $version
Release: 1
Summary: $3
License: GPL-2.0-or-later
URL: https://example.invalid/qpm
BuildArch: x86_64

%description
$4

%install
cp -a "$top/STAGE/." "%{buildroot}/"

%files
$5
SPEC
    local payload=w9.xzdio
    [ -n "$fast" ] && payload=w1.gzdio
    rpmbuild -bb --quiet --define "_topdir $top" --define "_buildhost qpm" \
      --define "_binary_payload $payload" \
      --define "use_source_date_epoch_as_buildtime 1" --define "clamp_mtime_to_source_date_epoch 1" \
      "$top/SPECS/$name.spec" >/dev/null
    local f
    f=$(find "$top/RPMS" -name '*.rpm' | head -n1)
    cp "$f" "$out/"
    echo "$out/$(basename "$f")"
  }
  rpm qpm stage_qpm 'Multi-qube application packages for Qubes OS (CLI)' \
    'qpm installs, upgrades and removes multi-qube applications as one unit from a management qube through the Qubes Admin API, from signed repositories.' \
    '%attr(0755,root,root) /usr/bin/qpm
%attr(0644,root,root) /usr/share/man/man1/qpm.1.gz
%attr(0644,root,root) /usr/share/bash-completion/completions/qpm
%attr(0644,root,root) /usr/share/zsh/site-functions/_qpm
%attr(0644,root,root) /usr/share/fish/vendor_completions.d/qpm.fish
%doc %attr(0644,root,root) /usr/share/doc/qpm/README.md'
  rpm qpm-agent stage_agent 'qpm configuration receiver for Qubes OS templates' \
    'The qpm.SyncConfig qrexec service: receives configuration pushed from the config qube, shows what changes and applies it with the consent of the user.' \
    '%attr(0755,root,root) /usr/bin/qpm-agent
%attr(0755,root,root) /etc/qubes-rpc/qpm.SyncConfig
%config(noreplace) %attr(0644,root,root) /etc/qubes/rpc-config/qpm.SyncConfig'
  rpm qpm-dom0 stage_dom0 'qpm dom0 bootstrap and policy gatekeeper' \
    'The only qpm code that runs in dom0: bootstraps the management qube and checks every package policy before it is installed.' \
    '%attr(0755,root,root) /usr/bin/qpm-dom0
%attr(0755,root,root) /etc/qubes-rpc/qpm.PolicySubmit
%attr(0755,root,root) /etc/qubes-rpc/qpm.PolicyGet
%attr(0755,root,root) /etc/qubes-rpc/qpm.PolicyRemove'
fi
