#!/usr/bin/env bash
# Build the Cloud Hypervisor guest: kernel, initramfs, read-only root disk, cmdline.
#
# Usage: images/build-guest.sh [--out DIR] [--agent PATH] [--rootfs DIR]
#   --out DIR     default: ${REWIND_DATA_DIR:-/var/lib/rewind}/images/guest
#   --agent PATH  rewind-agent binary to install as /usr/local/bin/rewind-agent
#                 default: $REWIND_AGENT_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/rewind-agent
#   --rootfs DIR  base rootfs directory; built with build-rootfs.sh when incomplete
#                 default: ${REWIND_DATA_DIR:-/var/lib/rewind}/images/base/rootfs
#
# Output (DIR, a symlink to DIR-<hash12>; see images/README.md):
#   vmlinuz       bzImage of Debian's linux-image-amd64 (boots under CH and QEMU)
#   initrd.img    gzip'd newc cpio: busybox-static, MODULES + OPTIONAL_MODULES (plus
#                 their modules.dep dependencies) and images/guest/init
#   rootfs.ext4   the base rootfs + the agent, ext4 without journal, mounted read-only
#   cmdline       the kernel command line to boot with (one line)
#   recipe.txt    what went in (kernel/busybox versions, modules, hashes)
#   .rewind-image-complete  sha256 of the recipe, written last
#
# Idempotent like build-rootfs.sh (builds in DIR.tmp, switches the symlink at the end).
# Kernel and busybox come from the host's installed Debian packages when they are
# installed (linux-image-amd64's current dependency, busybox-static), otherwise
# the .debs are fetched with `apt-get download` and unpacked.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

# Modules the guest needs (their dependencies are added from modules.dep).
MODULES="virtio_pci virtio_blk virtio_net virtio_console virtio_rng
vmw_vsock_virtio_transport crc32c_generic ext4 overlay"
# Loaded when they load; no warning otherwise (crc32c_intel needs SSE4.2, which
# QEMU's TCG CPU model lacks).
OPTIONAL_MODULES="crc32c_intel"
CMDLINE="console=ttyS0 console=hvc0 reboot=k panic=1 edd=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd rewind.listen=vsock:1024"
GUEST_VERSION=1 # bump when this script's output format changes

out="$REWIND_DATA_DIR/images/guest"
rootfs="$REWIND_DATA_DIR/images/base/rootfs"
agent="${REWIND_AGENT_BIN:-${CARGO_TARGET_DIR:-$(dirname "$here")/target}/release/rewind-agent}"

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --agent) agent="$2"; shift 2 ;;
        --rootfs) rootfs="$2"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

# shellcheck source-path=SCRIPTDIR source=guest/lib-guest.sh
. "$here/guest/lib-guest.sh"

main() {
    need_root
    need_cmds cpio gzip mkfs.ext4 resize2fs e2fsck dpkg-query sha256sum
    [ -x "$agent" ] || die "agent binary not found: $agent (cargo build -p rewind-agent --release, or --agent PATH)"
    "$here/build-rootfs.sh" --out "$rootfs"
    local kpkg text hash tmp start
    kpkg="$(kernel_package)"
    text="$(guest_recipe "$kpkg")"
    hash="$(recipe_hash "$text")"
    if is_complete "$out" "$hash"; then
        log "guest up to date: $out"
        return 0
    fi
    tmp="$out.tmp"
    remove_tree "$tmp"
    mkdir -p "$tmp"
    start=$(date +%s)
    fetch_packages "$kpkg" "$tmp/.pkgs"
    build_initrd "$tmp/.pkgs" "$tmp"
    build_root_disk "$tmp/rootfs.ext4"
    printf '%s\n' "$CMDLINE" >"$tmp/cmdline"
    printf '%s\n' "$text" >"$tmp/recipe.txt"
    rm -rf "$tmp/.pkgs"
    publish "$tmp" "$out" "$hash"
    log "guest built in $(( $(date +%s) - start ))s: $out"
    ls -l "$out" >&2
}

main
