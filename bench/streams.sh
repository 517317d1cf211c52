#!/usr/bin/env bash
# Stream benchmark (issue 14): gRPC unary calls and WebSocket echoes through Portcullis
# against nginx proxying the same, in one run, with the same pinning (servers and upstreams on
# CPU 0, load on CPU 1).
#
#   grpc-direct      h2load → the gRPC upstream (an always-OK tonic server, h2c)
#   grpc-nginx       h2load → nginx grpc_pass (h2c, keep-alive upstream) → the upstream
#   grpc-portcullis  h2load → Portcullis (h2c, an anonymous rule, `protocol: h2c` upstream)
#   ws-direct        ws-echo load → the echo upstream
#   ws-nginx         ws-echo load → nginx proxy_pass with Upgrade → the upstream
#   ws-portcullis    ws-echo load → Portcullis (a rule with `upgrade: {protocols:
#                    [websocket]}`) → the upstream
#
#   bench/streams.sh                  # 3 rounds of 6 s per scenario
#   DURATION=8 ROUNDS=5 bench/streams.sh
#
# The gRPC figure is calls per second (h2load, unary, pre-encoded request, trailers read); the
# WebSocket figure is echoed messages per second (bench/ws_echo.rs: each connection sends a
# message and waits for its echo). Only the ratios within one run mean anything.
#
# Env: DURATION (s, default 6), ROUNDS (default 3; the median is reported), H2_CONNS and
# H2_STREAMS (h2load, default 4 and 32), WS_CONNS (default 50), SERVER_CPU (0), LOAD_CPU (1),
# RESULTS (default bench/RESULTS.md; empty: do not record).
set -euo pipefail

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-32}
WS_CONNS=${WS_CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS-$ROOT/bench/RESULTS.md}
cd "$ROOT"

BENCH_NAME=streams
BENCH_TMP=portcullis-streams
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing nginx:nginx-light h2load:nghttp2-client curl:curl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "python3 is needed to pick free ports"

log "building target/perf/portcullis, trivial-check and ws-echo (profile perf)"
cargo build --profile perf --locked --bin portcullis --example trivial-check --example ws-echo >&2
BIN=$ROOT/target/perf/portcullis
TRIVIAL=$ROOT/target/perf/examples/trivial-check
WS=$ROOT/target/perf/examples/ws-echo

read -r P_GRPC_UP P_WS_UP P_NGX P_NGX_GRPC P_PC P_ADMIN < <(free_ports 6)

# --- Portcullis: one plain listener, an h2c gRPC upstream and a WebSocket upstream ------------
mkdir -p "$TMP/portcullis/policies"
cat >"$TMP/portcullis/policies/10-streams.yaml" <<'EOF'
rules:
  - name: grpc
    match:
      paths: ["/envoy.service.auth.v3.Authorization/**"]
      methods: [POST]
    effect: allow
    anonymous: true
    upstream: grpc
  - name: ws
    match:
      paths: ["/ws"]
      methods: [GET]
    effect: allow
    anonymous: true
    upgrade:
      protocols: [websocket]
    upstream: ws
EOF
cat >"$TMP/portcullis/portcullis.yaml" <<EOF
listeners:
  - name: http
    address: 127.0.0.1:$P_PC
admin:
  address: 127.0.0.1:$P_ADMIN
server:
  worker_threads: 1
upstreams:
  grpc:
    url: http://127.0.0.1:$P_GRPC_UP
    protocol: h2c
  ws:
    url: http://127.0.0.1:$P_WS_UP
policies:
  dir: policies
logging:
  level: warn
  access_log: false
EOF

# --- nginx: one worker; grpc_pass over h2c, and a WebSocket proxy ------------------------------
mkdir -p "$TMP/nginx"
{ nginx_head "$TMP/nginx"; cat <<EOF; } >"$TMP/nginx/nginx.conf"
    upstream grpc_up {
        server 127.0.0.1:$P_GRPC_UP;
        keepalive 16;
    }
    upstream ws_up {
        server 127.0.0.1:$P_WS_UP;
    }
    server {
        listen 127.0.0.1:$P_NGX_GRPC http2;
        location / {
            grpc_pass grpc://grpc_up;
        }
    }
    server {
        listen 127.0.0.1:$P_NGX;
        location /ws {
            proxy_pass http://ws_up;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
    }
}
EOF


taskset -c "$SERVER_CPU" "$TRIVIAL" serve "127.0.0.1:$P_GRPC_UP" >"$TMP/trivial.log" 2>&1 &
PIDS+=($!)
taskset -c "$SERVER_CPU" "$WS" serve "127.0.0.1:$P_WS_UP" >"$TMP/ws.log" 2>&1 &
PIDS+=($!)
taskset -c "$SERVER_CPU" "$BIN" run -c "$TMP/portcullis/portcullis.yaml" --no-watch \
    >"$TMP/portcullis.log" 2>&1 &
PC_PID=$!
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ADMIN/readyz" "portcullis /readyz" || { cat "$TMP/portcullis.log" >&2; exit 1; }
"$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" ||
    die "nginx config invalid"
taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
    >"$TMP/nginx/stdout.log" 2>&1 &
PIDS+=($!)
"$TRIVIAL" encode bench-token >"$TMP/check.bin"

# --- sanity: every path answers what it should -------------------------------------------------
for _ in $(seq 50); do "$TRIVIAL" ask "http://127.0.0.1:$P_GRPC_UP" bench-token 2>/dev/null && break; sleep 0.1; done
for p in $P_GRPC_UP $P_NGX_GRPC $P_PC; do
    "$TRIVIAL" ask "http://127.0.0.1:$p" bench-token || die "gRPC call through port $p not OK"
done
for p in $P_WS_UP $P_NGX $P_PC; do
    taskset -c "$LOAD_CPU" "$WS" load "ws://127.0.0.1:$p/ws" 2 1 >/dev/null ||
        die "WebSocket echo through port $p failed"
done
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST "http://127.0.0.1:$P_PC/other")
[[ $code == 403 ]] || die "portcullis: expected 403 (no rule) outside the rules, got $code"

# --- load ----------------------------------------------------------------------------------------
SCENARIOS=(grpc-direct grpc-nginx grpc-portcullis ws-direct ws-nginx ws-portcullis)
declare -A PORT=(
    [grpc-direct]=$P_GRPC_UP [grpc-nginx]=$P_NGX_GRPC [grpc-portcullis]=$P_PC
    [ws-direct]=$P_WS_UP [ws-nginx]=$P_NGX [ws-portcullis]=$P_PC)
# Calls or messages per second of one run, checked for errors; sets R_RPS.
run_scenario() { # $1 scenario
    local s=$1 out port=${PORT[$1]}
    case $s in
    grpc-*)
        run_load "$TMP/$s.txt" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" \
            --warm-up-time=1 -d "$TMP/check.bin" -H 'content-type: application/grpc' \
            -H 'te: trailers' "http://127.0.0.1:$port/envoy.service.auth.v3.Authorization/Check"
        out=$(<"$TMP/$s.txt")
        awk '/^requests:/ {exit !($10 == 0 && $12 == 0)}' <<<"$out" ||
            die "$s: failed or errored requests: $(grep '^requests:' <<<"$out")"
        awk '/^status codes:/ {gsub(/,/, ""); exit !($3 > 0 && $5 == 0 && $7 == 0 && $9 == 0)}' <<<"$out" ||
            die "$s: answers other than 200: $(grep '^status codes:' <<<"$out")"
        R_RPS=$(awk '/^finished in/ {gsub(/,/, "", $4); printf "%.0f", $4}' <<<"$out")
        ;;
    ws-*)
        run_load "$TMP/$s.txt" "$WS" load "ws://127.0.0.1:$port/ws" "$WS_CONNS" "$DURATION"
        R_RPS=$(awk '/^messages\/s/ {print $2}' "$TMP/$s.txt")
        ;;
    esac
    [[ -n $R_RPS ]] || die "$s: could not parse the load tool's output"
}

declare -A RUNS RPS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#SCENARIOS[@]}
    for ((i = 0; i < n; i++)); do
        s=${SCENARIOS[$(((i + round - 1) % n))]}
        log "$s (round $round/$ROUNDS): ${DURATION}s"
        run_scenario "$s"
        RUNS[$s]+="$R_RPS"$'\n'
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
for s in "${SCENARIOS[@]}"; do
    RPS[$s]=$(sort -n <<<"${RUNS[$s]%$'\n'}" | awk -v m=$(((ROUNDS + 1) / 2)) 'NR == m')
done
kill -0 "$PC_PID" 2>/dev/null || { cat "$TMP/portcullis.log" >&2; die "portcullis exited"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock bench 2>/dev/null || COMMIT+="+dirty"
table() {
    echo "| scenario | per second (median of $ROUNDS) | vs direct |"
    echo "|---|---:|---:|"
    for s in "${SCENARIOS[@]}"; do
        echo "| $s | ${RPS[$s]} | $(ratio "${RPS[$s]}" "${RPS[${s%%-*}-direct]}")× |"
    done
    echo
    echo "- gRPC unary, Portcullis / nginx grpc_pass: **$(ratio "${RPS[grpc-portcullis]}" "${RPS[grpc-nginx]}")×**"
    echo "- WebSocket echo, Portcullis / nginx: **$(ratio "${RPS[ws-portcullis]}" "${RPS[ws-nginx]}")×**"
}
table
if [[ -n $RESULTS ]]; then
    {
        echo
        echo "## streams: $(date -u '+%Y-%m-%d %H:%M UTC') — commit $COMMIT"
        echo
        echo "$(nproc) CPUs; servers and upstreams on CPU $SERVER_CPU, load on CPU $LOAD_CPU; load" \
            "average $LOAD_BEFORE before, $LOAD_AFTER after. h2load -t1 -c$H2_CONNS -m$H2_STREAMS" \
            "-D$DURATION (gRPC calls/s); ws-echo load, $WS_CONNS connections, ${DURATION}s" \
            "(echoed messages/s). bench/streams.sh."
        echo
        table
    } >>"$RESULTS"
    log "appended to ${RESULTS#"$ROOT"/}"
fi
