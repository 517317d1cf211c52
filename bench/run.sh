#!/usr/bin/env bash
# Load benchmark: the same wrk load against the upstream directly, through nginx proxy_pass and
# through Portcullis, plain HTTP and TLS, in one run. Prints req/s, p50, p99 and the ratios, and
# appends them to bench/RESULTS.md. Servers are pinned to CPU 0, wrk to CPU 1.
#
#   bench/run.sh                       # 3 rounds of 6 s per scenario, 50 connections
#   DURATION=8 ROUNDS=5 CONNS=100 bench/run.sh
#
# Env: DURATION (s per run, default 6), ROUNDS (default 3; the median is reported), CONNS
# (default 50), WARMUP (s, default 1), SERVER_CPU (0),
# LOAD_CPU (1), RESULTS (default bench/RESULTS.md; empty: do not record), PERF (a scenario name:
# profile Portcullis with perf during it, report in target/perf-SCENARIO.txt), BASE (another
# portcullis binary, say a build of the commit before a change: it serves the same config as
# the scenario portcullis-base, and the table compares the two in the same run).
set -euo pipefail

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
WARMUP=${WARMUP:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
THREADS=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${RESULTS-$ROOT/bench/RESULTS.md}
cd "$ROOT"

BENCH_NAME=bench
BENCH_TMP=portcullis-bench
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
install_missing nginx:nginx-light wrk:wrk openssl:openssl curl:curl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v python3 >/dev/null || die "python3 is needed to pick free ports"

log "building target/perf/portcullis and the bare hyper proxy (profile perf: release + thin LTO)"
cargo build --profile perf --locked --bin portcullis --example bare-proxy >&2
BIN=$ROOT/target/perf/portcullis
BARE=$ROOT/target/perf/examples/bare-proxy

# --- ports, certificate --------------------------------------------------------------------------
# Bind all sockets at once so the ports are distinct, then release them.
read -r P_UP P_NGX P_NGX_TLS P_PC P_PC_TLS P_ADMIN P_BARE P_BASE P_BASE_TLS P_BASE_ADMIN < <(free_ports 10)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

# --- nginx: upstream and proxy (one worker each) -------------------------------------------------
nginx_conf() { # $1 name, $2 http{} body
    mkdir -p "$TMP/$1"
    { nginx_head "$TMP/$1"; cat <<EOF; } >"$TMP/$1/nginx.conf"
$2
}
EOF
}

nginx_conf upstream "
    server {
        listen 127.0.0.1:$P_UP;
        location / { default_type text/plain; return 200 \"ok\n\"; }
        location = /__bench_status { stub_status; }
    }"

nginx_conf proxy "
    upstream app {
        server 127.0.0.1:$P_UP;
        keepalive 64;
    }
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    server {
        listen 127.0.0.1:$P_NGX;
        listen 127.0.0.1:$P_NGX_TLS ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"

start_nginx() { # $1 name
    "$NGINX" -t -q -p "$TMP/$1" -e "$TMP/$1/error.log" -c "$TMP/$1/nginx.conf" ||
        die "nginx $1 config invalid"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/$1" -e "$TMP/$1/error.log" -c "$TMP/$1/nginx.conf" \
        >"$TMP/$1/stdout.log" 2>&1 &
    PIDS+=($!)
}

# --- portcullis ----------------------------------------------------------------------------------
mkdir -p "$TMP/portcullis/policies"
# A JWT-protected route: RS256, key from a PEM file; every request carries the same token,
# so after the first one it is a cached verification.
"$BIN" keys new --alg RS256 --kid bench --out "$TMP/keys" >/dev/null
TOKEN=$(bench_token "$BIN" "$TMP/keys")
# The full gateway (issue 4's load row): TLS and `full_rule` (bench/common.sh).
{
    echo "rules:"
    full_rule
    cat <<'EOF'
  - name: jwt
    match:
      paths: ["/jwt/**"]
    effect: allow
    authenticators: [bench]
    upstream: app
  - name: all
    match:
      paths: ["/**"]
    effect: allow
    anonymous: true
    upstream: app
EOF
} >"$TMP/portcullis/policies/10-all.yaml"
cat >"$TMP/portcullis/portcullis.yaml" <<EOF
listeners:
  - name: http
    address: 127.0.0.1:$P_PC
  - name: https
    address: 127.0.0.1:$P_PC_TLS
    tls:
      certificates:
        - cert: $TMP/cert.pem
          key: $TMP/key.pem
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
$(full_settings "$TMP/keys")
EOF

# --- start and wait ------------------------------------------------------------------------------

start_nginx upstream
wait_http "http://127.0.0.1:$P_UP/" "upstream nginx" || { cat "$TMP/upstream/error.log" >&2; exit 1; }
start_nginx proxy
wait_http "http://127.0.0.1:$P_NGX/" "nginx proxy" || { cat "$TMP/proxy/error.log" >&2; exit 1; }
taskset -c "$SERVER_CPU" "$BARE" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP" >"$TMP/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=($!)
wait_http "http://127.0.0.1:$P_BARE/" "bare hyper proxy" || { cat "$TMP/bare.log" >&2; exit 1; }
taskset -c "$SERVER_CPU" "$BIN" run -c "$TMP/portcullis/portcullis.yaml" --no-watch \
    >"$TMP/portcullis/stdout.log" 2>&1 &
PC_PID=$!
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ADMIN/readyz" "portcullis /readyz" ||
    { cat "$TMP/portcullis/stdout.log" >&2; exit 1; }

# --- scenarios -----------------------------------------------------------------------------------
SCENARIOS=(direct nginx hyper-bare portcullis portcullis-jwt nginx-tls portcullis-tls portcullis-full)
BASE_PID=
if [[ -n ${BASE:-} ]]; then
    [[ -x $BASE ]] || die "BASE=$BASE is not an executable"
    mkdir -p "$TMP/base"
    ln -s "$TMP/portcullis/policies" "$TMP/base/policies"
    sed -e "s/127.0.0.1:$P_PC_TLS\$/127.0.0.1:$P_BASE_TLS/" -e "s/127.0.0.1:$P_PC\$/127.0.0.1:$P_BASE/" \
        -e "s/127.0.0.1:$P_ADMIN\$/127.0.0.1:$P_BASE_ADMIN/" \
        "$TMP/portcullis/portcullis.yaml" >"$TMP/base/portcullis.yaml"
    taskset -c "$SERVER_CPU" "$BASE" run -c "$TMP/base/portcullis.yaml" --no-watch \
        >"$TMP/base/stdout.log" 2>&1 &
    BASE_PID=$!
    PIDS+=($!)
    wait_http "http://127.0.0.1:$P_BASE_ADMIN/readyz" "base portcullis /readyz" ||
        { cat "$TMP/base/stdout.log" >&2; exit 1; }
    SCENARIOS+=(portcullis-base)
fi
declare -A URL=(
    [direct]="http://127.0.0.1:$P_UP/"
    [nginx]="http://127.0.0.1:$P_NGX/"
    [hyper-bare]="http://127.0.0.1:$P_BARE/"
    [portcullis]="http://127.0.0.1:$P_PC/"
    [portcullis-jwt]="http://127.0.0.1:$P_PC/jwt/"
    [nginx-tls]="https://127.0.0.1:$P_NGX_TLS/"
    [portcullis-tls]="https://127.0.0.1:$P_PC_TLS/"
    [portcullis-full]="https://127.0.0.1:$P_PC_TLS/full/acme/orders"
    [portcullis-base]="http://127.0.0.1:$P_BASE/"
)
declare -A HEADER=([portcullis-jwt]="Authorization: Bearer $TOKEN" [portcullis-full]="Authorization: Bearer $TOKEN")
declare -A RPS P50 P99 NON2XX SOCKERR UPCONN CPU INSTR

# Connections the upstream has accepted so far (stub_status): shows whether a proxy pools.
upstream_accepts() {
    curl -fs --max-time 2 "http://127.0.0.1:$P_UP/__bench_status" | awk 'NR == 3 {print $1}'
}

to_ms() { # wrk latency (e.g. 812.00us, 1.23ms, 1.02s) -> ms
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

# wrk in the background so that a signal runs the cleanup trap at once.
run_wrk() { # $1 output file, rest: wrk arguments
    local outfile=$1
    shift
    taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNS" "$@" >"$outfile" &
    LOAD_PID=$!
    wait "$LOAD_PID" || die "wrk failed: $(cat "$outfile")"
    LOAD_PID=
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The protected route refuses a request without the token.
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "${URL[portcullis-jwt]}")
[[ $code == 401 ]] || die "portcullis-jwt: expected 401 without a token, got $code"
# The full route refuses another tenant's path (the CEL condition runs).
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$P_PC_TLS/full/other/orders")
[[ $code == 403 ]] || die "portcullis-full: expected 403 for another tenant, got $code"
for s in "${SCENARIOS[@]}"; do
    hdr=()
    [[ -z ${HEADER[$s]:-} ]] || hdr=(-H "${HEADER[$s]}")
    body=$(curl -fsk --max-time 2 "${hdr[@]}" "${URL[$s]}") || die "$s: sanity request failed"
    [[ $body == ok ]] || die "$s: unexpected body: $body"
done

# The process doing the proxying in each scenario, for its CPU time and instructions per request
# (perf stat): steadier than req/s on a shared machine, since other tenants' load mostly shows
# as fewer requests rather than more work per request.
UP_WORKER=$(pgrep -P "${PIDS[0]}" | head -1)
NGX_WORKER=$(pgrep -P "${PIDS[1]}" | head -1)
declare -A PROC=([direct]=$UP_WORKER [nginx]=$NGX_WORKER [nginx-tls]=$NGX_WORKER [hyper-bare]=$BARE_PID
    [portcullis]=$PC_PID [portcullis-jwt]=$PC_PID [portcullis-tls]=$PC_PID [portcullis-full]=$PC_PID
    [portcullis-base]=$BASE_PID)
# Without counters, CPU time comes from the kernel's schedstat (common.sh's cpu_ns), read just
# before wrk starts and just after it ends.
COUNTERS=
if perf stat -x, -e task-clock,instructions -o "$TMP/perf-probe.txt" true 2>/dev/null &&
    ! grep -q 'not supported\|not counted' "$TMP/perf-probe.txt"; then
    COUNTERS=1
else
    log "perf stat cannot count instructions here: the instruction column stays empty, CPU is schedstat's"
fi

# One run of one scenario; sets R_RPS R_P50 R_P99 R_NON2XX R_SOCKERR R_UPCONN R_CPU R_INSTR.
run_scenario() { # $1 scenario, $2 round
    local s=$1 round=$2 hdr=() perf_pid= stat_pid= acc0 out n cpu0= cpu1
    [[ -z ${HEADER[$s]:-} ]] || hdr=(-H "${HEADER[$s]}")
    if [[ $WARMUP != 0 ]]; then
        run_wrk "$TMP/warmup-$s.txt" -d"${WARMUP}s" "${hdr[@]}" "${URL[$s]}"
    fi
    log "$s (round $round/$ROUNDS): ${DURATION}s, $CONNS connections"
    acc0=$(upstream_accepts)
    if [[ -n ${PERF:-} && $PERF == "$s" && $round == 1 ]]; then
        # A CPU profile of Portcullis during this scenario, for finding where the time goes.
        perf record -F 1999 -g -p "$PC_PID" -o "$TMP/perf.data" -- sleep "$DURATION" \
            >/dev/null 2>&1 &
        perf_pid=$!
    elif [[ -n $COUNTERS ]]; then
        perf stat -x, -e task-clock,instructions -p "${PROC[$s]}" -o "$TMP/stat-$s.txt" &
        stat_pid=$!
    else
        cpu0=$(cpu_ns "${PROC[$s]}")
    fi
    run_wrk "$TMP/wrk-$s.txt" -d"${DURATION}s" --latency "${hdr[@]}" "${URL[$s]}"
    [[ -z $cpu0 ]] || cpu1=$(cpu_ns "${PROC[$s]}")
    if [[ -n $stat_pid ]]; then
        kill -INT "$stat_pid" 2>/dev/null || true
        wait "$stat_pid" 2>/dev/null || true
    fi
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        perf report -i "$TMP/perf.data" --no-children --percent-limit 0.05 --stdio -g none \
            >"$ROOT/target/perf-$s.txt" 2>/dev/null || true
        log "profile of $s: target/perf-$s.txt"
    fi
    out=$(<"$TMP/wrk-$s.txt")
    R_UPCONN=$(($(upstream_accepts) - acc0 - 1))
    R_RPS=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    [[ -n $R_RPS ]] || { printf '%s\n' "$out" >&2; die "$s: could not parse wrk output"; }
    R_P50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    R_P99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    R_NON2XX=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    R_SOCKERR=$(awk -F'[ ,]+' '/Socket errors:/ {print $4+$6+$8+$10}' <<<"$out")
    R_CPU=
    R_INSTR=
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    if [[ -n $stat_pid && -s $TMP/stat-$s.txt && ${n:-0} -gt 0 ]]; then
        # The counter runs from just before wrk starts to just after it ends: a slight
        # overestimate, the same for every scenario.
        R_CPU=$(awk -F, -v n="$n" '$3 == "task-clock" {printf "%.1f", $1 * 1000 / n}' "$TMP/stat-$s.txt")
        R_INSTR=$(awk -F, -v n="$n" '$3 ~ /^instructions/ && $1 ~ /^[0-9]+$/ {printf "%.0f", $1 / n}' \
            "$TMP/stat-$s.txt")
    elif [[ -n $cpu0 && ${n:-0} -gt 0 ]]; then
        R_CPU=$(awk -v c=$((cpu1 - cpu0)) -v n="$n" 'BEGIN {printf "%.1f", c / 1000 / n}')
    fi
}

# Rounds: every scenario once per round, the order rotated each round, so that a change in the
# machine's background load during the run falls on all scenarios alike. Each column reports
# the median over the rounds (p50 and p99 those of the median run).
declare -A RUNS
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#SCENARIOS[@]}
    for ((i = 0; i < n; i++)); do
        s=${SCENARIOS[$(((i + round - 1) % n))]}
        run_scenario "$s" "$round"
        RUNS[$s]+="$R_RPS ${R_P50:-0} ${R_P99:-0} ${R_NON2XX:-0} ${R_SOCKERR:-0} ${R_UPCONN:-0} ${R_CPU:--} ${R_INSTR:--}"$'\n'
    done
done
for s in "${SCENARIOS[@]}"; do
    # The run with the median req/s; errors are summed over all runs.
    read -r RPS[$s] P50[$s] P99[$s] _ _ UPCONN[$s] _ _ < <(sort -n <<<"${RUNS[$s]%$'\n'}" |
        awk -v m=$(((ROUNDS + 1) / 2)) 'NR == m')
    NON2XX[$s]=$(awk '{t += $4} END {print t + 0}' <<<"${RUNS[$s]}")
    SOCKERR[$s]=$(awk '{t += $5} END {print t + 0}' <<<"${RUNS[$s]}")
    CPU[$s]=$(awk '$7 != "-" {print $7}' <<<"${RUNS[$s]}" | sort -n |
        awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}')
    INSTR[$s]=$(awk '$8 != "-" {print $8}' <<<"${RUNS[$s]}" | sort -n |
        awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}')
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Portcullis must still be alive (a crash mid-run would show as socket errors).
kill -0 "$PC_PID" 2>/dev/null || { cat "$TMP/portcullis/stdout.log" >&2; die "portcullis exited"; }

# --- report --------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r != "n/a" && r + 0 >= t) ? "PASS" : "FAIL" }'; }

# "; CPU per request a/b" when both were measured: below 1 means a spends less.
cpu_note() { # $1 scenario a, $2 scenario b
    [[ ${CPU[$1]:--} != - && ${CPU[$2]:--} != - ]] || return 0
    printf '; proxy CPU per request %s× of %s'"'"'s' "$(ratio "${CPU[$1]}" "${CPU[$2]}")" "$2"
}

table() {
    echo "| scenario | req/s | p50 ms | p99 ms | vs direct | proxy CPU µs/req | proxy instr/req | non-2xx | socket errors | upstream conns |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for s in "${SCENARIOS[@]}"; do
        printf '| %s | %s | %s | %s | %s× | %s | %s | %s | %s | %s |\n' "$s" "${RPS[$s]}" \
            "${P50[$s]}" "${P99[$s]}" "$(ratio "${RPS[$s]}" "${RPS[direct]}")" "${CPU[$s]}" \
            "${INSTR[$s]}" "${NON2XX[$s]}" "${SOCKERR[$s]}" "${UPCONN[$s]}"
    done
    echo
    local r
    r=$(ratio "${RPS[portcullis]}" "${RPS[nginx]}")
    echo "- portcullis / nginx: **${r}×** (target ≥ 1.0×): **$(verdict "$r" 1.0)**$(cpu_note portcullis nginx)"
    r=$(ratio "${RPS[hyper-bare]}" "${RPS[nginx]}")
    echo "- hyper-bare (the HTTP stack alone: hyper server and client, nothing else) / nginx: ${r}×$(cpu_note hyper-bare nginx)"
    r=$(ratio "${RPS[portcullis]}" "${RPS[hyper-bare]}")
    echo "- portcullis / hyper-bare (what the gateway's own work costs): ${r}×$(cpu_note portcullis hyper-bare)"
    r=$(ratio "${RPS[portcullis-tls]}" "${RPS[nginx-tls]}")
    echo "- portcullis-tls / nginx-tls: **${r}×** (target ≥ 1.5×): **$(verdict "$r" 1.5)**$(cpu_note portcullis-tls nginx-tls)"
    r=$(ratio "${RPS[portcullis-jwt]}" "${RPS[portcullis]}")
    echo "- portcullis-jwt (cached RS256) / portcullis: **${r}×** (target ≥ 0.9×): **$(verdict "$r" 0.9)**$(cpu_note portcullis-jwt portcullis)"
    r=$(ratio "${RPS[portcullis-full]}" "${RPS[nginx]}")
    echo "- portcullis-full (TLS, cached RS256, claim check, CEL, rate limit, identity headers) / nginx (plain proxy_pass): **${r}×** (target ≥ 1.0×): **$(verdict "$r" 1.0)**$(cpu_note portcullis-full nginx)"
    # The complete proxy's targets (issue 14): the gateway's own work priced in CPU against
    # the bare HTTP stack, and the whole gateway against nginx's plain proxying.
    r=$(ratio "${CPU[portcullis]/-/0}" "${CPU[hyper-bare]/-/0}")
    echo "- portcullis CPU per request / hyper-bare's: **${r}×** (target ≤ 1.08×): **$(awk -v r="$r" 'BEGIN { print (r != "n/a" && r + 0 > 0 && r + 0 <= 1.08) ? "PASS" : "FAIL" }')**"
    r=$(ratio "${RPS[portcullis-full]}" "${RPS[nginx]}")
    echo "- portcullis-full / nginx (plain proxy_pass), req/s: **${r}×** (target ≥ 0.8×): **$(verdict "$r" 0.8)**"
    if [[ -n $BASE_PID ]]; then
        r=$(ratio "${RPS[portcullis]}" "${RPS[portcullis-base]}")
        echo "- portcullis / portcullis-base (this build against BASE, same config, same run): ${r}×$(cpu_note portcullis portcullis-base); instructions per request $(ratio "${INSTR[portcullis]:-0}" "${INSTR[portcullis-base]:-0}")×"
    fi
}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || COMMIT+="+dirty"
WRK_PARAMS="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency (after a ${WARMUP}s warm-up), keep-alive, GET /; median of $ROUNDS rounds"
ENV_LINE="nproc $(nproc); servers on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU; load avg before $LOAD_BEFORE, after $LOAD_AFTER; $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); $(openssl version | cut -d' ' -f1-2)"

echo
table
echo
echo "commit $COMMIT; $ENV_LINE"
echo "$WRK_PARAMS"

if [[ -n $RESULTS ]]; then
    if [[ ! -f $RESULTS ]]; then
        cat >"$RESULTS" <<'EOF'
# Load benchmark results

Appended by `bench/run.sh`, newest last. Method: one run starts a small nginx upstream (one
worker, `return 200 "ok\n"`, no access log), an nginx reverse proxy (one worker, `proxy_pass` to
an `upstream` block with `keepalive 64`, HTTP/1.1 to the upstream, TLS 1.2/1.3 with a session
cache on its TLS port) and Portcullis (`worker_threads: 1`, access log off, one allow rule `/**`
to the upstream, a plain and a TLS listener with the same self-signed P-256 certificate as
nginx). All servers are pinned to CPU 0 with `taskset`, and wrk (one thread, keep-alive
connections) to CPU 1. The scenarios run in rounds (each once per round, the order rotated every
round), each run for the same fixed duration after a short warm-up, and the table gives the
median run of each:

- `direct`: wrk → upstream (the ceiling of this machine);
- `nginx`: wrk → nginx `proxy_pass` → upstream;
- `hyper-bare`: wrk → `bench/bare_proxy.rs` → upstream: hyper's HTTP/1 server and client on
  one thread with pooled connections and nothing else, the floor of Portcullis' HTTP stack;
- `portcullis`: wrk → Portcullis (plain HTTP) → upstream;
- `portcullis-jwt`: the same, on a route requiring an RS256 JWT (PEM key file); every request
  carries the same token, so all but the first are cached verifications;
- `nginx-tls`: wrk → nginx terminating TLS → upstream;
- `portcullis-tls`: wrk → Portcullis terminating TLS → upstream;
- `portcullis-full`: wrk → Portcullis over TLS on a route with everything on: the cached RS256
  token, a scope and a claim requirement, a CEL `when` over a path parameter, a rate limit (far
  above the load) and four identity headers.

Only the ratios measured within one run matter (targets: portcullis ≥ 1.0× nginx,
portcullis-tls ≥ 1.5× nginx-tls, portcullis-jwt ≥ 0.9× portcullis, portcullis-full ≥ 1.0× nginx). The absolute numbers depend on the machine and on whatever
else runs on it, and must not be compared across runs or machines. `non-2xx` and `socket errors`
come from wrk, summed over the rounds; `proxy CPU µs/req` and `proxy instr/req` are the CPU time
and instructions (user and kernel, `perf stat`) of the proxying process (the upstream for
`direct`) per request: steadier than req/s on a shared machine. `upstream conns` is how many connections the upstream accepted during the
measured window (nginx `stub_status`): a pooling proxy opens few, one per request means no reuse. `+dirty` after the commit
means `src/` or `Cargo.*` had uncommitted changes.
EOF
    fi
    {
        echo
        echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — commit $COMMIT"
        echo
        echo "$ENV_LINE. \`$WRK_PARAMS\`."
        echo
        table
    } >>"$RESULTS"
    log "appended to ${RESULTS#"$ROOT"/}"
fi
