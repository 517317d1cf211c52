#!/usr/bin/env bash
# Instructions per request of the plain proxy path, counted by callgrind: steady where req/s
# is not (a shared 2-core machine). Compares this tree's perf build with another binary.
#
#   bench/instructions.sh BASE_BIN [N]     # N keep-alive requests (default 5000)
#
# Each binary serves the same config (one anonymous allow rule to an `ok` upstream,
# worker_threads 1, access log off) under valgrind; after a warm-up, the counters are zeroed,
# N sequential keep-alive GETs are sent by one curl, and the instructions the gateway ran are
# dumped. Prints instructions per request of each and the ratio.
#
# FULL=1 measures bench/run.sh's full rule instead, over plain HTTP (no TLS): a cached RS256
# token, a scope and a claim requirement, a CEL condition over a path parameter, a rate limit
# far above the load and identity headers. Both binaries serve it.
set -euo pipefail
BASE=${1:?usage: bench/instructions.sh BASE_BIN [N]}
N=${2:-5000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# NEW=<binary> measures that binary instead of building this tree's; EXTRA=<yaml> is appended
# to this one's config (say `tracing: {propagate: false}`, to see what a feature costs).
# BARE=<binary> also measures the hyper-bare proxy (`cargo build --profile perf --example
# bare-proxy`, bench/bare_proxy.rs) under the same load: the floor of the HTTP stack, as
# bench/run.sh's `hyper-bare` row, in instructions.
if [[ -z ${NEW:-} ]]; then
    cargo build --profile perf --locked --bin portcullis >&2
    NEW=$ROOT/target/perf/portcullis
fi
BENCH_NAME=instructions
BENCH_TMP=portcullis-instr
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
read -r P_UP P_GW P_ADMIN P_BARE < <(python3 -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*(x.getsockname()[1] for x in s))')
# The upstream answers `ok` whatever it is sent (as bench/run.sh's nginx does), so a header
# the gateway adds costs only what the gateway spends on it.
python3 - "$P_UP" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)
mkdir -p "$TMP/policies"
cat >"$TMP/policies/10-all.yaml" <<YAML
rules:
  - name: all
    match: {paths: ["/**"]}
    effect: allow
    anonymous: true
    upstream: app
YAML
cat >"$TMP/portcullis.yaml" <<YAML
listeners: [{name: http, address: "127.0.0.1:$P_GW"}]
admin: {address: "127.0.0.1:$P_ADMIN"}
server: {worker_threads: 1}
upstreams: {app: {url: "http://127.0.0.1:$P_UP"}}
policies: {dir: policies}
logging: {level: warn, access_log: false}
YAML
PREFIX=
AUTH=()
if [[ -n ${FULL:-} ]]; then
    "$NEW" keys new --alg RS256 --kid bench --out "$TMP/keys" >/dev/null
    AUTH=(-H "Authorization: Bearer $(bench_token "$NEW" "$TMP/keys")")
    PREFIX=/full/acme
    { echo "rules:"; full_rule; } >"$TMP/policies/05-full.yaml"
    full_settings "$TMP/keys" >>"$TMP/portcullis.yaml"
fi
cp "$TMP/portcullis.yaml" "$TMP/base.yaml"
printf '%s\n' "${EXTRA:-}" >>"$TMP/portcullis.yaml"
# Under valgrind, the command after $1 (a label), once $2 (a URL) answers: the warm-up, then
# N keep-alive GETs to port $3 counted. Prints the window's instructions.
measure() { # $1 label, $2 ready URL, $3 port, then the command
    local label=$1 ready=$2 port=$3 out=$TMP/callgrind.$1
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out.%p" --dump-instr=no --collect-atstart=yes \
        "$@" >"$TMP/$label.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do curl -fs -o /dev/null "$ready" && break; sleep 0.2; done
    curl -fs -o /dev/null "${AUTH[@]}" "http://127.0.0.1:$port$PREFIX/warm/[1-500]"
    callgrind_control -z "$pid" >/dev/null
    curl -fs -o /dev/null "${AUTH[@]}" "http://127.0.0.1:$port$PREFIX/items/[1-$N]"
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # The dump after the zeroing holds the measured window only.
    [[ -z ${KEEP:-} ]] || cp "$out.$pid.1" "$KEEP.$label"
    awk '/^summary:/ {print $2}' "$out.$pid.1"
}
gateway() { # $1 binary, $2 label, $3 config
    measure "$2" "http://127.0.0.1:$P_ADMIN/readyz" "$P_GW" "$1" run -c "$3" --no-watch
}
B=$(gateway "$BASE" base "$TMP/base.yaml")
T=$(gateway "$NEW" new "$TMP/portcullis.yaml")
awk -v b="$B" -v t="$T" -v n="$N" 'BEGIN {
    printf "base: %.0f instructions/request\nthis: %.0f instructions/request\nratio this/base: %.4f\n", b / n, t / n, t / b }'
if [[ -n ${BARE:-} ]]; then
    # The same window of the same load, through the hyper-bare proxy.
    H=$(measure bare "http://127.0.0.1:$P_BARE/" "$P_BARE" "$BARE" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP")
    awk -v h="$H" -v t="$T" -v n="$N" 'BEGIN {
        printf "hyper-bare: %.0f instructions/request\nratio this/hyper-bare: %.4f\n", h / n, t / h }'
fi
