#!/usr/bin/env bash
# Boot-to-agent-ready time of the guest under QEMU software emulation (TCG).
#
# Usage: images/bench-guest-boot.sh [--runs N] [--guest DIR]
#   --runs N     boots to time (default 3); prints each and the median
#   --guest DIR  output of build-guest.sh (default: $REWIND_GUEST_DIR, else
#                ${REWIND_DATA_DIR:-/var/lib/rewind}/images/guest)
#
# "Ready" = the agent answered hello + ping over TCP through QEMU's user-mode
# network (restrict=on, one forward bound on 127.0.0.1). The clock starts just
# before qemu-system-x86_64 is spawned. On a real-KVM host with Cloud Hypervisor
# expect far less; this measures the image, not the hypervisor.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

runs=3
guest="${REWIND_GUEST_DIR:-$REWIND_DATA_DIR/images/guest}"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --guest) guest="$2"; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done
need_cmds qemu-system-x86_64 python3
[ -f "$guest/$MARKER" ] || die "no complete guest image in $guest (run images/build-guest.sh)"

work="$(mktemp -d)"
qpid=""
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

boot_once() {
    local port t
    port="$(free_port)"
    rm -f "$work/ws.img"
    "$here/make-workspace-image.sh" "$work/ws.img" 64M
    qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 1 -nographic -no-reboot \
        -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
        -append "$(cat "$guest/cmdline") rewind.listen=tcp:0.0.0.0:7000 rewind.ip=10.0.2.15/24" \
        -drive "file=$guest/rootfs.ext4,if=none,id=root,format=raw,readonly=on" \
        -device virtio-blk-pci,drive=root,serial=rootfs \
        -drive "file=$work/ws.img,if=none,id=ws,format=raw" -device virtio-blk-pci,drive=ws,serial=ws \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:7000" \
        -device virtio-net-pci,netdev=n0,romfile= </dev/null >"$work/console.log" 2>&1 &
    qpid=$!
    t="$(python3 "$here/guest/agent-probe.py" "127.0.0.1:$port" 180)" ||
        { tail -30 "$work/console.log" >&2; die "agent not ready after 180s"; }
    kill "$qpid"; wait "$qpid" 2>/dev/null || true; qpid=""
    echo "$t"
}

times=()
for i in $(seq "$runs"); do
    t="$(boot_once)"
    log "run $i: ${t}s"
    times+=("$t")
done
median="$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
echo "boot-to-agent-ready (QEMU TCG, $runs runs): ${times[*]} s; median ${median}s"
