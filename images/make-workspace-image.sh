#!/usr/bin/env bash
# Create an empty raw ext4 image for a VM workspace (or the guest's `state` disk).
#
# Usage: images/make-workspace-image.sh FILE SIZE
#   FILE  must not exist yet (never overwrites)
#   SIZE  as truncate(1) takes it: 1G, 512M, 10737418240
#
# The file is sparse: it takes almost no space until the guest writes. The root
# directory is owned by root and mode 0755. Attach it as virtio-blk with
# serial=ws; the guest agent mounts it at /workspace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

[ $# -eq 2 ] || die "usage: $0 FILE SIZE"
file="$1" size="$2"
need_cmds mkfs.ext4 truncate
[ -e "$file" ] && die "$file already exists"
tmp="$file.tmp.$$"
trap 'rm -f "$tmp"' EXIT
truncate -s "$size" "$tmp"
mkfs.ext4 -q -F -L rewind-ws -m 0 -E root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1 "$tmp"
mv "$tmp" "$file"
trap - EXIT
