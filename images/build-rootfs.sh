#!/usr/bin/env bash
# Build rewind's base root filesystem (Debian bookworm, debootstrap) as a directory.
#
# Usage: images/build-rootfs.sh [--out DIR] [--mirror URL] [--no-upgrade]
#   --out DIR      default: ${REWIND_DATA_DIR:-/var/lib/rewind}/images/base/rootfs
#   --mirror URL   default: http://deb.debian.org/debian (security updates come from
#                  the same host's /debian-security)
#   --no-upgrade   only the bookworm release pocket: skip bookworm-updates and
#                  bookworm-security (the build then depends on nothing but MIRROR)
#
# Output:
#   DIR                         symlink to DIR-<hash12>, the root filesystem (read-only
#                               lower layer of every namespace sandbox)
#   DIR/.rewind-image-complete  sha256 of the recipe; present only when the build finished
#   DIR/../recipe.txt           the recipe (suite, mirrors, variant, packages, post-steps)
#
# Idempotent: exits at once when DIR is complete with the same recipe hash. Builds
# into DIR.tmp and switches the symlink at the end, so an interrupted build never
# looks complete (its leftovers are unmounted and removed by the next run). The
# previous version stays on disk for sandboxes still using it; older ones are deleted.
#
# Package set: debootstrap --variant=minbase plus the list in PACKAGES below,
# then `apt-get upgrade` from bookworm-updates + bookworm-security
# (bash, coreutils, git, curl, python3, nodejs (REPLs and microsandbox-style images), ca-certificates, a C toolchain via
# build-essential, and procps/iproute2/util-linux for debugging). Not installed on
# purpose: a kernel, systemd, init scripts, man pages and docs (removed after install
# except copyright files) — the sandbox's PID 1 is rewind-agent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
UPGRADE=yes
VARIANT=minbase
PACKAGES="bash coreutils git curl python3 nodejs ca-certificates build-essential procps iproute2 util-linux less xz-utils"
# Bump when the post-install steps below change.
POST_VERSION=2
out="$REWIND_DATA_DIR/images/base/rootfs"

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --no-upgrade) UPGRADE=no; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

recipe() {
    cat <<R
suite=$SUITE
mirror=$MIRROR
variant=$VARIANT
packages=$PACKAGES
upgrade=$UPGRADE (from $(security_mirror) $SUITE-security and $SUITE-updates)
post_version=$POST_VERSION
R
}

security_mirror() { printf '%s' "${MIRROR%/debian}/debian-security"; }

write_sources() {
    local root="$1"
    {
        echo "deb $MIRROR $SUITE main"
        if [ "$UPGRADE" = yes ]; then
            echo "deb $MIRROR $SUITE-updates main"
            echo "deb $(security_mirror) $SUITE-security main"
        fi
    } >"$root/etc/apt/sources.list"
}

# Security and stable updates on top of the release; needs /proc and DNS in the chroot.
upgrade() {
    local root="$1"
    [ "$UPGRADE" = yes ] || return 0
    log "apt-get upgrade from $SUITE-updates and $SUITE-security"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q update >&2
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade >&2
    umount "$root/proc"
}

# Post-install: make the tree small, reproducible-ish and sandbox-ready.
post_install() {
    local root="$1"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -f "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/etc/machine-id
    : >"$root/etc/machine-id"
    echo rewind >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\trewind\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    # Placeholder; the runtime bind-mounts or writes the real one when networking is on.
    rm -f "$root/etc/resolv.conf"
    echo "# rewind: no network configured for this sandbox" >"$root/etc/resolv.conf"
    mkdir -p "$root/workspace" "$root/usr/local/bin"
    chmod 0755 "$root/workspace"
}

main() {
    need_root
    need_cmds debootstrap chroot findmnt sha256sum
    local text hash tmp start
    text="$(recipe)"
    hash="$(recipe_hash "$text")"
    if is_complete "$out" "$hash"; then
        log "rootfs up to date: $out"
        return 0
    fi
    tmp="$out.tmp"
    remove_tree "$tmp"
    mkdir -p "$(dirname "$out")"
    trap 'umount_under "'"$tmp"'"' EXIT
    start=$(date +%s)
    log "debootstrap $SUITE ($VARIANT) into $tmp"
    debootstrap --variant="$VARIANT" --include="${PACKAGES// /,}" \
        "$SUITE" "$tmp" "$MIRROR" >&2
    umount_under "$tmp"
    write_sources "$tmp"
    upgrade "$tmp"
    post_install "$tmp"
    printf '%s\n' "$text" >"$(dirname "$out")/recipe.txt"
    publish "$tmp" "$out" "$hash"
    trap - EXIT
    log "rootfs built in $(( $(date +%s) - start ))s: $out ($(du -sh --one-file-system "$out/" | cut -f1))"
}

main
