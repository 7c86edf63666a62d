#!/usr/bin/env bash
# Install the official static Cloud Hypervisor release binary (x86_64) that
# rewind's cloud-hypervisor runtime drives.
#
# Usage: scripts/install-cloud-hypervisor.sh [--prefix DIR]
#   --prefix DIR   install to DIR/cloud-hypervisor (default /usr/local/bin)
#
# Environment:
#   CH_VERSION     release tag to install (default: the pinned one below)
#   CH_SHA256      expected sha256 of the download; required when CH_VERSION
#                  is not the pinned version
#
# Run it on the host that runs rewind (it needs network access to github.com);
# it is not run in CI. The download is verified against the pinned sha256
# before anything is installed. The runtime finds the binary on PATH, or via
# REWIND_CH_BINARY / the `ch_binary` config key.
set -euo pipefail

PINNED_VERSION="v53.0"
# sha256 of https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download/v53.0/cloud-hypervisor-static
# (7,062,256 bytes), as published with the release asset and recorded
# independently by several public projects pinning v53.0.
PINNED_SHA256="448af3d4e59b22c2987f7df94c213ad40fb53a10d437e42b5ee6c4fce7c29ecc"

die() { echo "install-cloud-hypervisor: $*" >&2; exit 1; }

prefix=/usr/local/bin
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (got $(uname -m))"
command -v curl >/dev/null || die "curl is required"
command -v sha256sum >/dev/null || die "sha256sum is required"

version="${CH_VERSION:-$PINNED_VERSION}"
if [ "$version" = "$PINNED_VERSION" ]; then
    expected="${CH_SHA256:-$PINNED_SHA256}"
else
    expected="${CH_SHA256:-}"
    [ -n "$expected" ] || die "CH_VERSION=$version is not the pinned $PINNED_VERSION: set CH_SHA256 to its published sha256"
fi

url="https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download/${version}/cloud-hypervisor-static"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading $url"
curl --fail --location --silent --show-error --proto '=https' --tlsv1.2 -o "$tmp/cloud-hypervisor" "$url"
actual="$(sha256sum "$tmp/cloud-hypervisor" | cut -d' ' -f1)"
[ "$actual" = "$expected" ] || die "sha256 mismatch for $url: expected $expected, got $actual"

chmod 0755 "$tmp/cloud-hypervisor"
"$tmp/cloud-hypervisor" --version >/dev/null || die "the downloaded binary does not run on this host"
install -d "$prefix"
install -m 0755 "$tmp/cloud-hypervisor" "$prefix/cloud-hypervisor.new"
mv -f "$prefix/cloud-hypervisor.new" "$prefix/cloud-hypervisor"
echo "installed $("$prefix/cloud-hypervisor" --version | head -n1) to $prefix/cloud-hypervisor"
[ -e /dev/kvm ] || echo "warning: /dev/kvm does not exist on this host; the runtime needs KVM" >&2
