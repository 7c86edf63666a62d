#!/usr/bin/env bash
# Install (only) what is missing for building, running and testing rewind on
# Debian 12. Idempotent; needs root.
set -euo pipefail

PACKAGES=(
  btrfs-progs libbtrfsutil-dev   # the storage pool (mkfs at pool creation) and the libbtrfsutil crate
  clang libclang-dev pkg-config  # bindgen for libbtrfsutil-sys
  debootstrap                    # images/build-rootfs.sh
  busybox-static cpio            # guest initramfs, test rootfs
  linux-image-amd64              # guest kernel (bzImage)
  qemu-system-x86                # guest image test under software emulation
  kmod python3 procps             # guest image (depmod), boot bench probe, test helpers (pgrep)
  python3-venv                   # tests/v1.rs (py-microvm), tests/clients.rs (MCP and microsandbox SDKs): venvs
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
