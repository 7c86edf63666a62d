#!/usr/bin/env bash
# Install (only) what is missing for building, running and testing rewind on
# Debian 12. Idempotent; needs root.
set -euo pipefail

PACKAGES=(
  btrfs-progs libbtrfsutil-dev   # the storage pool (mkfs at pool creation) and the libbtrfsutil crate
  clang libclang-dev pkg-config  # bindgen for libbtrfsutil-sys
  debootstrap                    # images/build-rootfs.sh
  binutils                       # as/ld: tests/payload, the PVH test guest of tests/ch_memory.rs
  busybox-static cpio            # guest initramfs, test rootfs
  linux-image-amd64              # guest kernel (bzImage)
  qemu-system-x86                # guest image test under software emulation
  kmod python3 procps             # guest image (depmod), boot bench probe, test helpers (pgrep)
  python3-venv                   # tests/v1.rs (py-microvm), tests/clients.rs (MCP and microsandbox SDKs), tests/python_sdk.rs: venvs
  e2fsprogs util-linux iproute2 rsync curl jq
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (rewind manages Btrfs, loop devices and namespaces)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true
if ! grep -qw btrfs /proc/filesystems; then
  echo "install-deps: this kernel has no Btrfs support; rewind needs it" >&2
  exit 1
fi

# CRIU (memory snapshots of namespace sandboxes). Bookworm's criu 3.17 fails
# `criu check` on current kernels and trixie's binary package would pull a new
# libc, so build trixie's upstream 4.1.1 tarball against bookworm's -dev
# packages, checksum-verified against the trixie Sources index.
CRIU_VERSION=4.1.1
CRIU_BUILD_PACKAGES=(
  build-essential libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  patch python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev
  libgnutls28-dev pkg-config uuid-dev curl xz-utils
)
# Upstream fixes CRIU 4.1.1 lacks, applied to the tarball (scripts/criu/).
# 0001 (upstream c7395f4, in 4.2): restoring a sandbox whose background
# process lost its process-group leader fails without it.
# 0002 (as upstream PR #2719): on Linux >= 6.16 every dump of a process with
# a TCP/UDP socket fails ("Can't get 1:16 opt") without it.
# The stamp names the patch set, so a changed set rebuilds CRIU.
CRIU_PATCHES=$(cat "$(dirname "${BASH_SOURCE[0]}")"/criu/*.patch | sha256sum | cut -c1-12)
CRIU_STAMP=/usr/local/lib/rewind/criu-${CRIU_VERSION}-patched-${CRIU_PATCHES}
criu_works() {
  command -v criu >/dev/null 2>&1 && criu check 2>&1 | grep -q "Looks good" &&
    { [ -e "$CRIU_STAMP" ] || ! criu --version | grep -q "Version: [0-3]\.\|Version: 4\.[01]\b"; }
}
install_criu() {
  local src=/etc/apt/sources.list.d/rewind-trixie-src.sources
  local work tarball stanza sha dir
  cat >"$src" <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${CRIU_BUILD_PACKAGES[@]}"
  tarball="criu_${CRIU_VERSION}.orig.tar.xz"
  # The stanza of the trixie source package (bookworm's 3.17 may be listed too).
  stanza=$(apt-cache showsrc criu | awk -v v="Version: ${CRIU_VERSION}-" \
    '/^Package:/{keep=0} index($0, v)==1{keep=1} keep' )
  sha=$(awk -v f="$tarball" '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s && $3==f {print $1; exit}' <<<"$stanza")
  dir=$(awk '/^Directory:/{print $2; exit}' <<<"$stanza")
  if [ -z "$sha" ] || [ -z "$dir" ]; then
    echo "install-deps: trixie Sources has no criu ${CRIU_VERSION}" >&2
    exit 1
  fi
  work=$(mktemp -d)
  curl -fsSL -o "$work/$tarball" "http://deb.debian.org/debian/$dir/$tarball"
  echo "$sha  $work/$tarball" | sha256sum -c --quiet -
  tar -xJf "$work/$tarball" -C "$work"
  for p in "$(dirname "${BASH_SOURCE[0]}")"/criu/*.patch; do
    patch -d "$work/criu-${CRIU_VERSION}" -p1 -s <"$p"
  done
  make -C "$work/criu-${CRIU_VERSION}" -j"$(nproc)" criu
  install -m 0755 "$work/criu-${CRIU_VERSION}/criu/criu" /usr/local/sbin/criu
  install -D -m 0644 /dev/null "$CRIU_STAMP"
  rm -rf "$work"
}
if ! criu_works; then
  echo "install-deps: building criu ${CRIU_VERSION} (no working criu installed)"
  install_criu
  if ! criu_works; then
    echo "install-deps: criu ${CRIU_VERSION} was built but \`criu check\` fails:" >&2
    criu check >&2 || true
    exit 1
  fi
fi
