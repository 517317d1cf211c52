#!/usr/bin/env bash
# Load benchmark for rate limits: the same wrk load (keep-alive, one thread) on three routes of
# one Portcullis, each verifying the same cached RS256 token: without a limit, with a per-user
# limit in this process, and with the same limit in Redis (a redis-server started here). The
# limits are far above the load, so every request is counted and allowed. Prints req/s, p50
# and p99 per route (the median of ROUNDS rotated rounds) and the ratios local/none and
# redis/none. Portcullis, Redis and the nginx upstream are pinned to CPU 0, wrk to CPU 1 (as
# bench/run.sh does).
#
#   bench/ratelimit.sh                          # 3 rounds of 6 s, 50 connections, profile perf
#   PROFILE=release DURATION=5 bench/ratelimit.sh
#
# Env: DURATION (6), ROUNDS (3), CONNS (50), WARMUP (1), PROFILE (perf), SERVER_CPU (0),
# LOAD_CPU (1), REDIS_TIMEOUT (the per-check budget, 5ms), RESULTS (default
# bench/RESULTS.md; empty: do not record).
set -euo pipefail

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
WARMUP=${WARMUP:-1}
PROFILE=${PROFILE:-perf}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REDIS_TIMEOUT=${REDIS_TIMEOUT:-5ms}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS-$ROOT/bench/RESULTS.md}
cd "$ROOT"

BENCH_NAME=bench
BENCH_TMP=portcullis-rl-bench
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing nginx:nginx-light wrk:wrk redis-server:redis-server curl:curl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "python3 is needed to pick free ports"

log "building target/$PROFILE/portcullis"
cargo build --profile "$PROFILE" --locked --bin portcullis >&2
BIN=$ROOT/target/$PROFILE/portcullis

read -r P_UP P_PC P_ADMIN P_REDIS < <(free_ports 4)

# --- the upstream: nginx answering 200 "ok" --------------------------------------------------
mkdir -p "$TMP/upstream"
{ nginx_head "$TMP/upstream"; cat <<EOF; } >"$TMP/upstream/nginx.conf"
    server {
        listen 127.0.0.1:$P_UP;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/upstream" -e "$TMP/upstream/error.log" \
    -c "$TMP/upstream/nginx.conf" >"$TMP/upstream/stdout.log" 2>&1 &
PIDS+=($!)

# --- Redis ---------------------------------------------------------------------------------------
taskset -c "$SERVER_CPU" redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)

# --- Portcullis ----------------------------------------------------------------------------------
mkdir -p "$TMP/portcullis/policies"
"$BIN" keys new --alg RS256 --kid bench --out "$TMP/keys" >/dev/null
TOKEN=$("$BIN" token mint --key "$TMP/keys/bench.key" --alg RS256 --kid bench \
    --iss https://bench.portcullis --aud bench --sub bench-user --ttl 2h)
cat >"$TMP/portcullis/policies/10-all.yaml" <<'EOF'
rules:
  - {name: none, match: {paths: ["/none/**"]}, effect: allow, authenticators: [bench], upstream: app}
  - {name: local, match: {paths: ["/local/**"]}, effect: allow, authenticators: [bench], rate_limit: per-user-local, upstream: app}
  - {name: redis, match: {paths: ["/redis/**"]}, effect: allow, authenticators: [bench], rate_limit: per-user-redis, upstream: app}
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
  app:
    url: http://127.0.0.1:$P_UP
policies:
  dir: policies
logging:
  level: warn
  access_log: false
redis:
  url: redis://127.0.0.1:$P_REDIS
  timeout: $REDIS_TIMEOUT
rate_limits:
  per-user-local:
    key: principal
    requests: 1000000
    per: 1s
  per-user-redis:
    key: principal
    requests: 1000000
    per: 1s
    backend: redis
    on_redis_failure: deny
$(bench_authenticator "$TMP/keys")
EOF

wait_http "http://127.0.0.1:$P_UP/" "upstream nginx" || { cat "$TMP/upstream/error.log" >&2; exit 1; }
taskset -c "$SERVER_CPU" "$BIN" run -c "$TMP/portcullis/portcullis.yaml" --no-watch \
    >"$TMP/portcullis/stdout.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ADMIN/readyz" "portcullis /readyz" ||
    { cat "$TMP/portcullis/stdout.log" >&2; exit 1; }
for r in none local redis; do
    wait_http "http://127.0.0.1:$P_PC/$r/" "route /$r/" -H "Authorization: Bearer $TOKEN" ||
        { cat "$TMP/portcullis/stdout.log" >&2; exit 1; }
done

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
run_wrk() { # $1 output file, rest: wrk arguments
    local outfile=$1
    shift
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" "$@" >"$outfile" &
    LOAD_PID=$!
    wait "$LOAD_PID" || die "wrk failed: $(cat "$outfile")"
    LOAD_PID=
}

SCENARIOS=(none local redis)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A RUNS
for ((round = 1; round <= ROUNDS; round++)); do
    # Rotate the order every round, so a change in background load falls on all alike.
    for ((i = 0; i < ${#SCENARIOS[@]}; i++)); do
        s=${SCENARIOS[$(((i + round - 1) % ${#SCENARIOS[@]}))]}
        url="http://127.0.0.1:$P_PC/$s/"
        [[ $WARMUP == 0 ]] || run_wrk "$TMP/warm.txt" -d"${WARMUP}s" -H "Authorization: Bearer $TOKEN" "$url"
        log "$s (round $round/$ROUNDS): ${DURATION}s, $CONNS connections"
        run_wrk "$TMP/$s-$round.txt" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$url"
        out="$TMP/$s-$round.txt"
        rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$out")
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
        non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
        RUNS[$s]+="$rps $p50 $p99 ${non2xx:-0}"$'\n'
    done
done

median() { # stdin: runs "rps p50 p99 non2xx"; prints the run with the median rps
    sort -n -k1,1 | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'
}
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A RPS
for s in "${SCENARIOS[@]}"; do
    RPS[$s]=$(printf '%s' "${RUNS[$s]}" | median | awk '{print $1}')
done
METRICS=$(curl -fs "http://127.0.0.1:$P_ADMIN/metrics")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
table() {
    printf '| route | req/s | p50 ms | p99 ms | non-2xx |\n| --- | ---: | ---: | ---: | ---: |\n'
    for s in "${SCENARIOS[@]}"; do
        read -r rps p50 p99 non2xx < <(printf '%s' "${RUNS[$s]}" | median)
        printf '| %s | %s | %s | %s | %s |\n' "$s" "$rps" "$p50" "$p99" "$non2xx"
    done
    printf '\n- local/none **%s×** (target >= 0.97); redis/none %s×\n' \
        "$(ratio "${RPS[local]}" "${RPS[none]}")" "$(ratio "${RPS[redis]}" "${RPS[none]}")"
    # A check past REDIS_TIMEOUT counts as a timeout and, repeated, opens the breaker: the
    # Redis route's figure is then partly the fallback's.
    printf -- '- redis: %s calls, errors %s\n' \
        "$(awk '/^portcullis_redis_calls_total/ {print $2}' <<<"$METRICS")" \
        "$(awk '/^portcullis_redis_errors_total/ {printf "%s=%s ", $1, $2}' <<<"$METRICS")"
}
echo
table
if [[ -n $RESULTS ]]; then
    {
        echo
        commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
        git diff --quiet HEAD -- src Cargo.toml Cargo.lock bench 2>/dev/null || commit+="+dirty"
        echo "## ratelimit: $(date -u '+%Y-%m-%d %H:%M UTC') — commit $commit"
        echo
        echo "$(nproc) CPUs; Portcullis, Redis and nginx on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU; load" \
            "average $LOAD_BEFORE before, $LOAD_AFTER after. wrk -t1 -c$CONNS -d${DURATION}s, median" \
            "of $ROUNDS rounds; Redis budget $REDIS_TIMEOUT per check. bench/ratelimit.sh."
        echo
        table
    } >>"$RESULTS"
    log "appended to ${RESULTS#"$ROOT"/}"
fi
