#!/bin/bash
# Service-level per-command snapshot latency as a sandbox's history grows:
# a workspace of DIRS directories of 1000 files (default 20: 20k files), then
# N runs that each append to one file, printing the p50/p90 of `snapshotMs`
# per block of 100 runs. MAX sets storage.max_auto_snapshots (default: the
# service default, 1000) to see the steady state where every run also
# prunes the oldest snapshot. Root; needs a release build and the base image.
# Usage: [DIRS=20] [MAX=100] docs/scripts/history-probe.sh [N=600]
set -u
N=${1:-600}; DIRS=${DIRS:-20}
. "$(dirname "$0")/serve.sh"
CONF=
if [ -n "${MAX:-}" ]; then CONF=/tmp/history-probe.toml; printf '[storage]\nmax_auto_snapshots = %d\n' "$MAX" >$CONF; fi
serve_fresh /var/tmp/history-probe $CONF
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
stop_server
