#!/usr/bin/env bash
# Decision-door benchmark (issue 11): the doors against what the same peer does with a
# trivial authorizer, in one run, with the same pinning (servers on CPU 0, load on CPU 1).
#
#   nginx-static   wrk → nginx, auth_request → a `return 204` location in the same nginx (no
#                  subrequest proxying at all) → a static file
#   nginx-proxied  wrk → nginx, auth_request proxied exactly as for the door (the same upstream
#                  block with keepalive, the same headers) to a second one-worker nginx pinned
#                  like Portcullis that answers `return 204` → the same file
#   nginx-door     wrk → nginx, auth_request → Portcullis forward-auth door (a cached RS256
#                  token, a rule, identity headers) → the same file
#                  target: door ≥ 0.9× proxied (the trivial endpoint behind the same peer)
#   nginx-hyper    as nginx-proxied, the subrequest to hyper's HTTP/1 server answering 200
#                  (bench/bare_answer.rs, pinned like Portcullis): the floor of any HTTP door
#                  on Portcullis's stack, so door / hyper is the door's own cost and
#                  hyper / proxied the stack's
#   grpc-trivial   h2load → an always-allow tonic Check server (bench/trivial_check.rs)
#   grpc-door      h2load → Portcullis envoy_grpc door, the same CheckRequest with the same
#                  cached token                                          target ≥ 0.85×
#
#   bench/doors.sh                     # 3 rounds of 6 s per scenario
#   DURATION=8 ROUNDS=5 bench/doors.sh
#
# Env: DURATION (s, default 6), ROUNDS (default 3; the median is reported), CONNS (wrk
# connections, default 50), H2_CONNS and H2_STREAMS (h2load connections and concurrent streams
# per connection, default 4 and 32: Envoy multiplexes Checks over few connections),
# SERVER_CPU (0), LOAD_CPU (1), RESULTS (default bench/RESULTS.md; empty: do not record),
# PERF (a door scenario, nginx-door or grpc-door: profile Portcullis with perf during its first
# run, report in target/perf-SCENARIO.txt), SCENARIOS (a space-separated subset, default all).
set -euo pipefail

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-32}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS-$ROOT/bench/RESULTS.md}
cd "$ROOT"

BENCH_NAME=doors
BENCH_TMP=portcullis-doors
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing nginx:nginx-light wrk:wrk h2load:nghttp2-client curl:curl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "python3 is needed to pick free ports"

log "building target/perf/portcullis, trivial-check and bare-answer (profile perf)"
cargo build --profile perf --locked --bin portcullis --example trivial-check \
    --example bare-answer >&2
BIN=$ROOT/target/perf/portcullis
TRIVIAL=$ROOT/target/perf/examples/trivial-check
BARE=$ROOT/target/perf/examples/bare-answer

read -r P_STATIC P_DOOR P_FA P_GRPC P_TRIVIAL P_ADMIN P_PROXIED P_204 P_HYPER P_BARE \
    < <(free_ports 10)

# --- Portcullis: a forward-auth door and an Envoy gRPC door, one rule, a cached RS256 token ----
mkdir -p "$TMP/www/api"
echo ok >"$TMP/www/api/x"
door_gateway "$BIN" "$TMP/portcullis" "$P_FA" "$P_GRPC" "$P_ADMIN"

# --- nginx: one worker, four servers that differ only in what auth_request asks --------------
# The auth subrequest's proxying, identical for the door and for the trivial 204 server.
auth_proxy() { # $1 upstream
    cat <<EOF
            internal;
            proxy_pass http://$1/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI \$request_uri;
            proxy_set_header X-Original-Method \$request_method;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header Connection "";
            proxy_http_version 1.1;
EOF
}
mkdir -p "$TMP/nginx" "$TMP/nginx204"
declare -A MASTER
{ nginx_head "$TMP/nginx"; cat <<EOF; } >"$TMP/nginx/nginx.conf"
    default_type text/plain;
    upstream portcullis {
        server 127.0.0.1:$P_FA;
        keepalive 64;
    }
    upstream trivial204 {
        server 127.0.0.1:$P_204;
        keepalive 64;
    }
    upstream bare {
        server 127.0.0.1:$P_BARE;
        keepalive 64;
    }
    # The content is a static file: \`return\` would answer before the access phase, where
    # auth_request runs.
    server {
        listen 127.0.0.1:$P_STATIC;
        root $TMP/www;
        location /api/ {
            auth_request /_auth;
            auth_request_set \$pc_user_id \$upstream_http_x_user_id;
            add_header X-User-Id \$pc_user_id;
        }
        location = /_auth { internal; return 204; }
    }
    server {
        listen 127.0.0.1:$P_PROXIED;
        root $TMP/www;
        location /api/ {
            auth_request /_trivial;
            auth_request_set \$pc_user_id \$upstream_http_x_user_id;
            add_header X-User-Id \$pc_user_id;
        }
        location = /_trivial {
$(auth_proxy trivial204)
        }
    }
    server {
        listen 127.0.0.1:$P_HYPER;
        root $TMP/www;
        location /api/ {
            auth_request /_bare;
            auth_request_set \$pc_user_id \$upstream_http_x_user_id;
            add_header X-User-Id \$pc_user_id;
        }
        location = /_bare {
$(auth_proxy bare)
        }
    }
    server {
        listen 127.0.0.1:$P_DOOR;
        root $TMP/www;
        location /api/ {
            auth_request /_portcullis;
            auth_request_set \$pc_user_id \$upstream_http_x_user_id;
            add_header X-User-Id \$pc_user_id;
        }
        # As examples/nginx/nginx.conf asks.
        location = /_portcullis {
$(auth_proxy portcullis)
        }
    }
}
EOF
# The trivial endpoint behind the same peer: a second nginx, one worker, answering 204.
{ nginx_head "$TMP/nginx204"; cat <<EOF; } >"$TMP/nginx204/nginx.conf"
    server {
        listen 127.0.0.1:$P_204;
        location = /auth { return 204; }
    }
}
EOF


taskset -c "$SERVER_CPU" "$BIN" run -c "$TMP/portcullis/portcullis.yaml" --no-watch \
    >"$TMP/portcullis.log" 2>&1 &
PC_PID=$!
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ADMIN/readyz" "portcullis /readyz" || { cat "$TMP/portcullis.log" >&2; exit 1; }
for n in nginx nginx204; do
    "$NGINX" -t -q -p "$TMP/$n" -e "$TMP/$n/error.log" -c "$TMP/$n/nginx.conf" ||
        die "$n config invalid"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/$n" -e "$TMP/$n/error.log" -c "$TMP/$n/nginx.conf" \
        >"$TMP/$n/stdout.log" 2>&1 &
    PIDS+=($!)
    MASTER[$n]=$!
done
wait_http "http://127.0.0.1:$P_STATIC/api/x" "nginx" || { cat "$TMP/nginx/error.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$P_PROXIED/api/x" "nginx → nginx204" ||
    { cat "$TMP/nginx/error.log" "$TMP/nginx204/error.log" >&2; exit 1; }
taskset -c "$SERVER_CPU" "$TRIVIAL" serve "127.0.0.1:$P_TRIVIAL" >"$TMP/trivial.log" 2>&1 &
PIDS+=($!)
TRIVIAL_PID=$!
taskset -c "$SERVER_CPU" "$BARE" "127.0.0.1:$P_BARE" >"$TMP/bare.log" 2>&1 &
PIDS+=($!)
BARE_PID=$!
wait_http "http://127.0.0.1:$P_HYPER/api/x" "nginx → bare-answer" ||
    { cat "$TMP/nginx/error.log" "$TMP/bare.log" >&2; exit 1; }
# Each nginx's one worker (the master only supervises).
worker_of() { cat /proc/"$1"/task/*/children 2>/dev/null | awk '{print $1; exit}'; }
NGX_WORKER=$(worker_of "${MASTER[nginx]}")
NGX204_WORKER=$(worker_of "${MASTER[nginx204]}")
[[ -n $NGX_WORKER && -n $NGX204_WORKER ]] || die "cannot find the nginx workers"
"$TRIVIAL" encode "$TOKEN" >"$TMP/check.bin"

# --- sanity: each path decides what it should ------------------------------------------------
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$P_DOOR/api/x")
[[ $code == 401 ]] || die "nginx-door: expected 401 without a token, got $code"
user=$(curl -fs -D - -o /dev/null --max-time 2 -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$P_DOOR/api/x" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-user-id" {print $2}')
[[ $user == bench-user ]] || die "nginx-door: expected x-user-id bench-user, got '$user'"
for _ in $(seq 50); do "$TRIVIAL" ask "http://127.0.0.1:$P_TRIVIAL" "$TOKEN" && break; sleep 0.1; done
"$TRIVIAL" ask "http://127.0.0.1:$P_TRIVIAL" "$TOKEN" || die "grpc-trivial: Check not OK"
"$TRIVIAL" ask "http://127.0.0.1:$P_GRPC" "$TOKEN" || die "grpc-door: Check with the token not OK"
! "$TRIVIAL" ask "http://127.0.0.1:$P_GRPC" not-a-token 2>/dev/null ||
    die "grpc-door: Check with a bad token was OK"

# --- load ----------------------------------------------------------------------------------------
read -r -a SCENARIOS <<<"${SCENARIOS:-nginx-static nginx-proxied nginx-hyper nginx-door grpc-trivial grpc-door}"
# Requests per second of one run, checked for errors, and the CPU per request of the
# authorizer (the door, or the trivial server) and of the nginx worker in front; sets R_RPS,
# R_AUTH, R_NGXCPU.
run_scenario() { # $1 scenario
    local s=$1 out auth= ngx= t0 a0 n0 t1 a1 n1
    case $s in
    nginx-static) ngx=$NGX_WORKER ;;
    nginx-proxied) auth=$NGX204_WORKER ngx=$NGX_WORKER ;;
    nginx-hyper) auth=$BARE_PID ngx=$NGX_WORKER ;;
    nginx-door) auth=$PC_PID ngx=$NGX_WORKER ;;
    grpc-trivial) auth=$TRIVIAL_PID ;;
    grpc-door) auth=$PC_PID ;;
    esac
    t0=$(date +%s%N) a0=$(cpu_ns "$auth") n0=$(cpu_ns "$ngx")
    case $s in
    nginx-static | nginx-proxied | nginx-hyper | nginx-door)
        local port=$P_STATIC
        [[ $s == nginx-proxied ]] && port=$P_PROXIED
        [[ $s == nginx-hyper ]] && port=$P_HYPER
        [[ $s == nginx-door ]] && port=$P_DOOR
        run_load "$TMP/$s.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
            -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/x"
        out=$(<"$TMP/$s.txt")
        ! grep -q 'Non-2xx\|Socket errors' <<<"$out" || die "$s: errors: $out"
        R_RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
        ;;
    grpc-trivial | grpc-door)
        local port=$P_TRIVIAL
        [[ $s == grpc-door ]] && port=$P_GRPC
        run_load "$TMP/$s.txt" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" \
            --warm-up-time=1 -d "$TMP/check.bin" -H 'content-type: application/grpc' \
            -H 'te: trailers' "http://127.0.0.1:$port/envoy.service.auth.v3.Authorization/Check"
        out=$(<"$TMP/$s.txt")
        # h2load counts HTTP statuses: every gRPC answer is 200, which the sanity check above
        # showed to be an OK decision for this request.
        awk '/^requests:/ {exit !($10 == 0 && $12 == 0)}' <<<"$out" ||
            die "$s: failed or errored requests: $(grep '^requests:' <<<"$out")"
        R_RPS=$(awk '/^finished in/ {gsub(/,/, "", $4); printf "%.0f", $4}' <<<"$out")
        ;;
    esac
    [[ -n $R_RPS ]] || die "$s: could not parse the load tool's output"
    t1=$(date +%s%N) a1=$(cpu_ns "$auth") n1=$(cpu_ns "$ngx")
    R_AUTH=$(per_request $((a1 - a0)) $((t1 - t0)) "$R_RPS")
    R_NGXCPU=$(per_request $((n1 - n0)) $((t1 - t0)) "$R_RPS")
}

# Microseconds of CPU per request: $1 CPU ns over $2 wall ns at $3 req/s.
per_request() { awk -v c="$1" -v w="$2" -v r="$3" 'BEGIN { if (c > 0 && r > 0) printf "%.1f", c / 1000 / (r * w / 1e9); else print "-" }'; }

declare -A RUNS RPS AUTH_CPU NGX_CPU
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#SCENARIOS[@]}
    for ((i = 0; i < n; i++)); do
        s=${SCENARIOS[$(((i + round - 1) % n))]}
        log "$s (round $round/$ROUNDS): ${DURATION}s"
        perf_pid=
        if [[ -n ${PERF:-} && $PERF == "$s" && $round == 1 ]]; then
            perf record -F 999 --call-graph dwarf,32768 -p "$PC_PID" -o "$TMP/perf.data" -- sleep "$DURATION" \
                >/dev/null 2>&1 &
            perf_pid=$!
        fi
        run_scenario "$s"
        if [[ -n $perf_pid ]]; then
            wait "$perf_pid" || true
            perf report -i "$TMP/perf.data" --no-children --percent-limit 0.3 --stdio -g none \
                >"$ROOT/target/perf-$s.txt" 2>/dev/null || true
            cp "$TMP/perf.data" "$ROOT/target/perf-$s.data"
            log "profile of $s: target/perf-$s.txt, target/perf-$s.data"
        fi
        RUNS[$s]+="$R_RPS $R_AUTH $R_NGXCPU"$'\n'
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
median() { # $1 column of RUNS[$2]
    awk -v c="$1" '$c != "-" {print $c}' <<<"${RUNS[$2]%$'\n'}" | sort -n |
        awk '{v[NR] = $1} END {print NR ? v[int((NR + 1) / 2)] : "-"}'
}
for s in "${SCENARIOS[@]}"; do
    RPS[$s]=$(median 1 "$s")
    AUTH_CPU[$s]=$(median 2 "$s")
    NGX_CPU[$s]=$(median 3 "$s")
done
kill -0 "$PC_PID" 2>/dev/null || { cat "$TMP/portcullis.log" >&2; die "portcullis exited"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r != "n/a" && r + 0 >= t) ? "PASS" : "FAIL" }'; }
R_NGX=$(ratio "${RPS[nginx-door]:-0}" "${RPS[nginx-proxied]:-0}")
R_NGX_STATIC=$(ratio "${RPS[nginx-door]:-0}" "${RPS[nginx-static]:-0}")
R_GRPC=$(ratio "${RPS[grpc-door]:-0}" "${RPS[grpc-trivial]:-0}")
R_HYPER=$(ratio "${RPS[nginx-door]:-0}" "${RPS[nginx-hyper]:-0}")
R_FLOOR=$(ratio "${RPS[nginx-hyper]:-0}" "${RPS[nginx-proxied]:-0}")
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock bench 2>/dev/null || COMMIT+="+dirty"
table() {
    echo "| scenario | req/s (median of $ROUNDS) | authorizer CPU µs/req | nginx worker CPU µs/req |"
    echo "|---|---:|---:|---:|"
    for s in "${SCENARIOS[@]}"; do
        echo "| $s | ${RPS[$s]} | ${AUTH_CPU[$s]} | ${NGX_CPU[$s]} |"
    done
    echo
    echo "- nginx auth_request → door / → proxied to a one-worker nginx answering 204 (the" \
        "subrequest proxied the same way: what the door costs beyond a trivial endpoint's" \
        "answer): **${R_NGX}×** (target ≥ 0.9×: $(verdict "$R_NGX" 0.9))"
    echo "- nginx auth_request → door / → \`return 204\` inside the same nginx (no subrequest" \
        "proxying at all: the door's whole round trip against nothing): ${R_NGX_STATIC}×"
    echo "- the floor: nginx auth_request → hyper answering 200 / → the nginx 204 server:" \
        "${R_FLOOR}× (what the stack alone allows); door / hyper answering 200 (the door's" \
        "own work): ${R_HYPER}×; CPU per request, hyper $(ratio "${AUTH_CPU[nginx-hyper]:--}" \
        "${AUTH_CPU[nginx-proxied]:-0}")× the nginx 204 server's, the door" \
        "$(ratio "${AUTH_CPU[nginx-door]:--}" "${AUTH_CPU[nginx-hyper]:-0}")× hyper's"
    echo "- gRPC Check door / trivial tonic server: **${R_GRPC}×** (target ≥ 0.85×: $(verdict "$R_GRPC" 0.85))"
    echo "- CPU per request (lower is better): Portcullis's forward-auth door" \
        "$(ratio "${AUTH_CPU[nginx-door]:--}" "${AUTH_CPU[nginx-proxied]:-0}")× the nginx 204" \
        "server's, the nginx worker in front $(ratio "${NGX_CPU[nginx-door]:--}" "${NGX_CPU[nginx-proxied]:-0}")×" \
        "its own with that server; Portcullis's gRPC door" \
        "$(ratio "${AUTH_CPU[grpc-door]:--}" "${AUTH_CPU[grpc-trivial]:-0}")× the trivial tonic server's"
}
table
if [[ -n $RESULTS ]]; then
    {
        echo
        echo "## doors: $(date -u '+%Y-%m-%d %H:%M UTC') — commit $COMMIT"
        echo
        echo "$(nproc) CPUs; servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU; load average" \
            "$LOAD_BEFORE before, $LOAD_AFTER after. wrk -t1 -c$CONNS -d${DURATION}s;" \
            "h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION. bench/doors.sh."
        echo
        table
    } >>"$RESULTS"
    log "appended to ${RESULTS#"$ROOT"/}"
fi
