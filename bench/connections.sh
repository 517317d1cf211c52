#!/usr/bin/env bash
# Memory per idle TLS keep-alive connection on the release binary: RSS idle, RSS with N idle
# TLS connections (default 10,000), per-connection cost, RSS once they closed. Linux only.
#   bench/connections.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
# Client and gateway each hold N sockets (N + a few hundred must fit the hard limit).
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --bin portcullis --example idle-conns
target="${CARGO_TARGET_DIR:-target}"
"$target/release/examples/idle-conns" --binary "$target/release/portcullis" --conns "$n"
