#!/usr/bin/env bash
# The gateway under a paced HTTP/2 rapid reset: its CPU, a normal client's p50/p99 latency and
# the upstream TCP connections opened, in one run. Linux only.
#   bench/rapid_reset.sh [SECONDS] [BINARY]   (BINARY: another build to compare, e.g. before)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
cargo build --release --locked --bin portcullis --example rapid-reset
target="${CARGO_TARGET_DIR:-target}"
"$target/release/examples/rapid-reset" --binary "${2:-$target/release/portcullis}" --secs "$secs"
