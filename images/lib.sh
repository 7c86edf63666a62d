# shellcheck shell=bash
# Shared helpers for the rewind image scripts. Sourced, not executed.
#
# Completion protocol used by every image: an output directory is complete
# when it holds `.rewind-image-complete` whose content is the sha256 of the
# recipe that produced it. Builds happen in `<dir>.tmp` and are renamed into
# place at the very end, so a killed build never looks complete.

REWIND_DATA_DIR="${REWIND_DATA_DIR:-/var/lib/rewind}"
MARKER=.rewind-image-complete

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

need_cmds() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "missing command: $c (see scripts/install-deps.sh)"
    done
}

# recipe_hash TEXT -> sha256 hex of TEXT
recipe_hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# is_complete DIR HASH -> success when DIR was completed by the same recipe
is_complete() { [ -f "$1/$MARKER" ] && [ "$(cat "$1/$MARKER")" = "$2" ]; }

# umount_under DIR: unmount everything mounted at or below DIR, deepest first.
# Needed before deleting a half-built chroot (debootstrap mounts proc/sys/dev).
umount_under() {
    local dir m
    dir="$(realpath -m "$1")"
    [ -e "$dir" ] || return 0
    findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1' |
        sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
        done
}

# remove_tree DIR: unmount then delete without ever crossing into another fs.
remove_tree() {
    [ -e "$1" ] || return 0
    umount_under "$1"
    rm -rf --one-file-system "$1"
}

# publish TMP DIR HASH: mark TMP complete and make DIR point at it, atomically.
#
# DIR is a symlink to DIR-<hash12>, a real directory. Switching the symlink is
# one rename(2), so readers see the old or the new image, never a mix. The
# version it replaced is kept (sandboxes started from it may still use it as
# their overlay lower dir or root disk); older versions are deleted.
publish() {
    local tmp="$1" dir="$2" hash="$3" ver prev v
    ver="$dir-${hash:0:12}"
    sync -f "$tmp" 2>/dev/null || sync
    # the marker is written last; its content is compared exactly (no newline)
    printf '%s' "$hash" >"$tmp/$MARKER"
    if [ -d "$dir" ] && [ ! -L "$dir" ]; then
        prev="$dir-old"
        remove_tree "$prev"
        mv "$dir" "$prev" # a pre-symlink layout: keep it one generation too
    elif [ -L "$dir" ]; then
        prev="$(dirname "$dir")/$(readlink "$dir")"
    fi
    remove_tree "$ver" # a leftover, or the live copy when rebuilding the same recipe
    mv "$tmp" "$ver"
    ln -sfn "$(basename "$ver")" "$dir.link"
    mv -T "$dir.link" "$dir"
    for v in "$dir"-*; do
        if [ ! -d "$v" ] || [ -L "$v" ]; then continue; fi
        case "$v" in "$ver" | "${prev:-}" | *.tmp) continue ;; esac
        remove_tree "$v"
    done
}
