#!/usr/bin/env bash
# The one command to run rewind on a fresh Debian 12 machine: installs what
# is missing, builds (release), builds the base image if missing, and serves
# on $PORT (default 4000). Runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --workspace --locked

DATA_DIR=${REWIND_DATA_DIR:-/var/lib/rewind}
images/build-rootfs.sh --out "$DATA_DIR/images/base/rootfs"

export REWIND_AGENT_BINARY=${REWIND_AGENT_BINARY:-$PWD/target/release/rewind-agent}
exec target/release/rewind --config config/rewind.toml serve
