#!/usr/bin/env bash
# Runs every test of rewind on a fresh Debian 12 machine (as root): installs
# what is missing, checks formatting and lints, builds the images the tests
# need (once; later runs reuse them), then runs the whole suite. Tests that
# cannot run on this host are reported as skipped by name, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --locked

DATA_DIR=${REWIND_DATA_DIR:-/var/lib/rewind}
step "base image (debootstrap; first run only)"
images/build-rootfs.sh --out "$DATA_DIR/images/base/rootfs"
export REWIND_TEST_BASE_IMAGE="$DATA_DIR/images/base/rootfs"

step "tests"
cargo test --workspace --locked 2>&1 | tee /tmp/rewind-test-output.txt

step "skipped here"
grep -E "^SKIPPED|ignored, " /tmp/rewind-test-output.txt | sed 's/^/  /' || echo "  (none)"
