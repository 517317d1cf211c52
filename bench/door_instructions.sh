#!/usr/bin/env bash
# Instructions per decision at the doors, counted by callgrind: steady where req/s is not (a
# shared 2-core machine; bench/doors.sh measures req/s). Same config and token as doors.sh (a
# cached RS256 token, one rule, two identity headers).
#
#   bench/door_instructions.sh [N]     # N decisions per measurement (default 2000)
#
# Prints instructions per Check of the gRPC door and of the trivial always-OK tonic server
# (bench/trivial_check.rs, the baseline doors.sh compares with) and their ratio, and
# instructions per request of the forward-auth door as nginx's `auth_request` asks, against
# hyper's HTTP/1 server answering 200 to the same requests (bench/bare_answer.rs: the floor of
# any HTTP door on this stack) and their ratio. Each
# process runs under valgrind with instrumentation off until a warm-up of 500 decisions is
# done; then N are counted. NEW=<binary> measures that build instead of this tree's;
# KEEP=<prefix> keeps the callgrind profiles as <prefix>.trivial, <prefix>.grpc, <prefix>.bare
# and <prefix>.fa
# (callgrind_annotate reads them).
set -euo pipefail
N=${1:-2000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_NAME=door-instructions
BENCH_TMP=portcullis-door-instr
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing valgrind:valgrind h2load:nghttp2-client curl:curl
log "building target/perf/portcullis, trivial-check and bare-answer (profile perf)"
cargo build --profile perf --locked --bin portcullis --example trivial-check \
    --example bare-answer >&2
BIN=${NEW:-$ROOT/target/perf/portcullis}
TRIVIAL=$ROOT/target/perf/examples/trivial-check
BARE=$ROOT/target/perf/examples/bare-answer

read -r P_GRPC P_FA P_ADMIN P_TRIVIAL P_BARE < <(free_ports 5)
door_gateway "$BIN" "$TMP/gw" "$P_FA" "$P_GRPC" "$P_ADMIN"
"$TRIVIAL" encode "$TOKEN" >"$TMP/check.bin"

# $1 port, $2 requests: Checks over one connection, 8 streams at a time.
grpc_load() {
    h2load -t1 -c1 -m8 -n"$2" -d "$TMP/check.bin" -H 'content-type: application/grpc' \
        -H 'te: trailers' "http://127.0.0.1:$1/envoy.service.auth.v3.Authorization/Check" |
        awk '/^requests:/ {exit !($8 == $2 && $10 == 0 && $12 == 0)}' ||
        die "Checks failed on port $1"
}
# $1 port, $2 requests: what nginx's auth_request sends, over 4 kept-alive connections.
fa_load() {
    h2load --h1 -t1 -c4 -n"$2" -H "Authorization: Bearer $TOKEN" -H "X-Original-URI: /api/x" \
        -H "X-Original-Method: GET" -H "X-Forwarded-Proto: http" \
        -H "X-Forwarded-Host: app.example" -H "X-Forwarded-For: 127.0.0.1" \
        "http://127.0.0.1:$1/auth" | grep -q '^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' ||
        die "forward-auth requests failed on port $1"
}
wait_port() { for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.2; done; die "nothing on port $1"; }
# $1 label, $2 load function, $3 port, then the command to run under valgrind. Sets RESULT to
# the instructions per decision. (Not in a subshell: a failure must leave the process in PIDS
# for common.sh's cleanup to stop.)
measure() {
    local label=$1 load=$2 port=$3 out=$TMP/callgrind.$1
    shift 3
    valgrind --tool=callgrind --instr-atstart=no --dump-instr=no --callgrind-out-file="$out" \
        "$@" >"$TMP/$label.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    "$load" "$port" 500
    callgrind_control -i on "$pid" >/dev/null
    "$load" "$port" "$N"
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
    RESULT=$(awk -v n="$N" '/^totals:/ {printf "%.0f", $2 / n}' "$out".1)
    if [[ -n ${KEEP:-} ]]; then cp "$out".1 "$KEEP.$label"; fi
}
log "trivial tonic server: $N Checks"
measure trivial grpc_load "$P_TRIVIAL" "$TRIVIAL" serve "127.0.0.1:$P_TRIVIAL"
TRIV=$RESULT
log "gRPC door: $N Checks"
measure grpc grpc_load "$P_GRPC" "$BIN" run -c "$TMP/gw/portcullis.yaml" --no-watch
GRPC=$RESULT
log "forward-auth door: $N requests"
measure fa fa_load "$P_FA" "$BIN" run -c "$TMP/gw/portcullis.yaml" --no-watch
FA=$RESULT
log "hyper answering 200: $N requests"
measure bare fa_load "$P_BARE" "$BARE" "127.0.0.1:$P_BARE"
BARE_I=$RESULT
awk -v t="$TRIV" -v g="$GRPC" -v f="$FA" -v b="$BARE_I" 'BEGIN {
    printf "trivial tonic server: %d instructions/Check\n", t
    printf "gRPC door:            %d instructions/Check (%.2fx the trivial server)\n", g, g / t
    printf "forward-auth door:    %d instructions/request (%.2fx hyper answering 200)\n", f, f / b
    printf "hyper answering 200:  %d instructions/request\n", b }'
