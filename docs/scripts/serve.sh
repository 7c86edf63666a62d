# Sourced by the probes in this folder: start a release build of the
# service on a fresh data dir and make an admin key; stop it again.
# serve_fresh DIR [CONFIG] sets PORT, SRV, H (the key header) and J.
BIN=${REWIND_BIN_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release}
BASE=${REWIND_BASE_IMAGE:-/var/lib/rewind/images/base/rootfs}

serve_fresh() {
  D=$1; PORT=$((4100 + RANDOM % 800))
  umount "$D/pool" 2>/dev/null; rm -rf "$D"; mkdir -p "$D"
  [ -n "${2:-}" ] && cp "$2" "$D/rewind.toml"
  env ${2:+REWIND_CONFIG=$D/rewind.toml} REWIND_BASE_IMAGE=$BASE REWIND_DATA_DIR=$D PORT=$PORT \
    REWIND_RUNTIME=namespace REWIND_AGENT_BINARY=$BIN/rewind-agent "$BIN/rewind" serve 2>"$D/log" &
  SRV=$!
  for _ in $(seq 600); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
  local key
  key=$(curl -s -XPOST localhost:$PORT/api-keys | jq -r .key)
  [ -n "$key" ] && [ "$key" != null ] || { echo "server did not start"; tail -5 "$D/log"; exit 1; }
  H="x-api-key: $key"; J="content-type: application/json"
}

stop_server() {
  kill "$SRV"; wait "$SRV" 2>/dev/null
  umount "$D/pool" 2>/dev/null
}
