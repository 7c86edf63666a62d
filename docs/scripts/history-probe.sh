#!/bin/bash
# Service-level per-command snapshot latency as a sandbox's history grows:
# a workspace of DIRS directories of 1000 files (default 20: 20k files), then
# N runs that each append to one file, printing the p50/p90 of `snapshotMs`
# per block of 100 runs. MAX sets storage.max_auto_snapshots (default: the
# service default, 1000) to see the steady state where every run also
# prunes the oldest snapshot. Root; needs a release build and the base image.
# Usage: [DIRS=20] [MAX=100] docs/scripts/history-probe.sh [N=600]
set -u
N=${1:-600}; DIRS=${DIRS:-20}; D=/var/tmp/history-probe; PORT=$((4600 + RANDOM % 300))
BIN=${REWIND_BIN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
BASE=${REWIND_BASE_IMAGE:-/var/lib/rewind/images/base/rootfs}
umount $D/pool 2>/dev/null; rm -rf $D; mkdir -p $D
CONF=
if [ -n "${MAX:-}" ]; then CONF=$D/rewind.toml; printf '[storage]\nmax_auto_snapshots = %d\n' "$MAX" >$CONF; fi
env ${CONF:+REWIND_CONFIG=$CONF} REWIND_BASE_IMAGE=$BASE REWIND_DATA_DIR=$D PORT=$PORT REWIND_RUNTIME=namespace REWIND_AGENT_BINARY=$BIN/rewind-agent \
  "$BIN/rewind" serve 2>$D/log &
SRV=$!
for i in $(seq 600); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
K=$(curl -s -XPOST localhost:$PORT/api-keys | jq -r .key); [ -n "$K" ] && [ "$K" != null ] || { echo "server did not start"; tail -5 $D/log; exit 1; }
H="x-api-key: $K"; J="content-type: application/json"
curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms -d '{"name":"h"}' >/dev/null
curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms/h/run -d '{"command":"mkdir -p t && cd t && for d in $(seq '"$DIRS"'); do mkdir $d; (cd $d && seq 1000 | xargs touch); done","timeout":300}' >/dev/null
S=()
for i in $(seq "$N"); do
  S+=($(curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms/h/run -d "{\"command\":\"echo $i >> t/1/1\"}" | jq .snapshotMs))
done
echo "| runs | snapshotMs p50 | p90 |"
echo "|---|---|---|"
for ((b = 0; b < N; b += 100)); do
  printf '%s\n' "${S[@]:b:100}" | sort -n | awk -v b=$b '{a[NR]=$1} END {printf "| %d–%d | %d | %d |\n", b+1, b+NR, a[int((NR+1)/2)], a[int(NR*0.9)]}'
done
curl -s -XDELETE -H "$H" localhost:$PORT/vms/h >/dev/null
kill $SRV; wait $SRV 2>/dev/null
umount $D/pool 2>/dev/null
