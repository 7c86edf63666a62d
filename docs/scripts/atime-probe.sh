#!/bin/bash
# Service-level snapshot after read-only commands, with the sandbox's
# workspace mount `relatime` (what a pool mounted by older rewind versions
# gave) and `noatime` (now): the pool is bind-remounted to each mode before
# the sandbox is created, so the sandbox's copy of the mount has that mode.
# Each sandbox gets DIRS×1000 files (default 20: 20k), then `grep -r` over
# them twice; prints `snapshotMs` of each run. Root; needs a release build
# and the base image. Usage: [DIRS=20] docs/scripts/atime-probe.sh
set -u
DIRS=${DIRS:-20}; D=/var/tmp/atime-probe; PORT=$((4600 + RANDOM % 300))
BIN=${REWIND_BIN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
BASE=${REWIND_BASE_IMAGE:-/var/lib/rewind/images/base/rootfs}
umount $D/pool 2>/dev/null; rm -rf $D; mkdir -p $D
REWIND_BASE_IMAGE=$BASE REWIND_DATA_DIR=$D PORT=$PORT REWIND_RUNTIME=namespace REWIND_AGENT_BINARY=$BIN/rewind-agent \
  "$BIN/rewind" serve 2>$D/log &
SRV=$!
for i in $(seq 600); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
K=$(curl -s -XPOST localhost:$PORT/api-keys | jq -r .key); [ -n "$K" ] && [ "$K" != null ] || { echo "server did not start"; tail -5 $D/log; exit 1; }
H="x-api-key: $K"; J="content-type: application/json"
runms() {
  jq -n --arg c "$2" '{command: $c, timeout: 300}' |
    curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms/$1/run -d @- | jq -r '"\(.snapshotMs) (exec \(.execMs))"'
}
echo "| workspace mount | populate | grep -r, first | grep -r, second | echo >> one file |"
echo "|---|---|---|---|---|"
for mode in relatime noatime; do
  mount -o remount,bind,atime,$mode $D/pool  # "atime" clears noatime
  curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms -d "{\"name\":\"$mode\"}" >/dev/null
  p=$(runms $mode 'mkdir -p t && cd t && for d in $(seq '"$DIRS"'); do mkdir $d; (cd $d && for f in $(seq 1000); do echo $d-$f > $f; done); done')
  g1=$(runms $mode 'grep -r nomatch t; true')
  g2=$(runms $mode 'grep -r nomatch t; true')
  e=$(runms $mode 'echo x >> t/1/1')
  echo "| $mode | $p | $g1 | $g2 | $e |"
  curl -s -XDELETE -H "$H" localhost:$PORT/vms/$mode >/dev/null
done
kill $SRV; wait $SRV 2>/dev/null
umount $D/pool 2>/dev/null
