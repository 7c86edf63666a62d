#!/bin/bash
# Service-level cost of Btrfs quota groups: a 20k-file workspace, 20 restores,
# 20 runs; prints the latencies in order. Root; needs a release build and the
# base image. Usage: docs/scripts/quota-probe.sh <true|false>
set -u
Q=$1
. "$(dirname "$0")/serve.sh"
printf "[storage]\nquotas = %s\n" "$Q" > /tmp/quota-probe-$Q.toml
serve_fresh /var/tmp/quota-probe-$Q /tmp/quota-probe-$Q.toml
curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms -d '{"name":"q"}' >/dev/null
A=$(curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms/q/run -d '{"command":"mkdir -p t && cd t && for d in $(seq 20); do mkdir $d; (cd $d && seq 1000 | xargs touch); done; find . | wc -l","timeout":300}' | jq -r .snapshot)
B=$(curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms/q/run -d '{"command":"echo x > t/1/1"}' | jq -r .snapshot)
T=()
for i in $(seq 20); do
  S=$A; [ $((i % 2)) = 0 ] && S=$B
  s=$(date +%s%N); curl -s -XPOST -H "$H" localhost:$PORT/vms/q/snapshots/$S/restore >/dev/null; e=$(date +%s%N)
  T+=($(( (e - s) / 1000000 )))
done
R=()
for i in $(seq 20); do R+=($(curl -s -XPOST -H "$H" -H "$J" localhost:$PORT/vms/q/run -d '{"command":"true"}' | jq .snapshotMs)); done
echo "quotas=$Q restore ms: ${T[*]}"
echo "quotas=$Q run-snapshot ms after restores: ${R[*]}"
curl -s -H "$H" localhost:$PORT/vms/q/snapshots | jq -c '[.snapshots[] | [.snapshot_name, .exclusive_bytes, .referenced_bytes]] | .[0:3]'
curl -s -XDELETE -H "$H" localhost:$PORT/vms/q >/dev/null
stop_server
