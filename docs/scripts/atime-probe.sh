#!/bin/bash
# Service-level snapshot after read-only commands, with the sandbox's
# workspace mount `relatime` (what a pool mounted by older rewind versions
# gave) and `noatime` (now): the pool is bind-remounted to each mode before
# the sandbox is created, so the sandbox's copy of the mount has that mode.
# Each sandbox gets DIRS×1000 files (default 20: 20k), then `grep -r` over
# them twice; prints `snapshotMs` of each run. Root; needs a release build
# and the base image. Usage: [DIRS=20] docs/scripts/atime-probe.sh
set -u
DIRS=${DIRS:-20}
. "$(dirname "$0")/serve.sh"
serve_fresh /var/tmp/atime-probe
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
stop_server
