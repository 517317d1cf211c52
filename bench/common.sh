# Sourced by the load benchmarks (run.sh, doors.sh, ratelimit.sh): logging, one temp dir and
# the processes each starts, all stopped on exit however it ends, and the Debian packages they
# need installed when missing.
#
# Set before sourcing: BENCH_NAME (the log prefix) and BENCH_TMP (the temp dir's name prefix).
# Provides: log, die, TMP, PIDS (append every server started), LOAD_PID (the load tool while
# it runs), install_missing.

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()
LOAD_PID=
TMP=$(mktemp -d -t "$BENCH_TMP.XXXXXX")
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -z $LOAD_PID ]] || PIDS+=("$LOAD_PID")
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 && -n "${KEEP_LOGS:-}" ]]; then log "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# install_missing COMMAND:PACKAGE ...: installs the package of each command not found (on the
# PATH or in /usr/sbin, where Debian puts nginx).
install_missing() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || [[ -x /usr/sbin/${pair%%:*} ]] || need+=("${pair#*:}")
    done
    ((${#need[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${need[*]}; run as root or install them"
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null; }
}

# free_ports N: N distinct free loopback ports, on one line (all bound at once, then released).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
}

# nginx_head DIR: the start of a one-worker nginx.conf whose files live in DIR, up to and
# including `http {` with logging off and long keep-alives; the caller adds its servers and
# the closing brace.
nginx_head() {
    local dir=$1
    cat <<NGX
$([[ $(id -u) -eq 0 ]] && echo "user root;")
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
NGX
}

# wait_http URL WHAT [curl arguments]: waits up to 10 s for URL to answer 2xx.
wait_http() {
    local url=$1 what=$2
    shift 2
    for _ in $(seq 100); do
        curl -fs -o /dev/null --max-time 1 "$@" "$url" && return 0
        sleep 0.1
    done
    log "$what did not answer at $url"
    return 1
}

# run_load OUTPUT COMMAND...: runs the load tool on LOAD_CPU, its output to OUTPUT; dies if it
# fails. Stopped with the rest if the script is interrupted.
run_load() {
    local outfile=$1
    shift
    taskset -c "$LOAD_CPU" "$@" >"$outfile" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || die "load failed: $(tail -5 "$outfile")"
    LOAD_PID=
}

# bench_authenticator KEYS: the `authenticators:` block of every benchmark config: `bench`,
# verifying the RS256 tokens `keys new --kid bench --out KEYS` signs for the issuer
# https://bench.portcullis and the audience bench.
bench_authenticator() {
    cat <<EOF
authenticators:
  bench:
    jwt:
      providers:
        - issuer: https://bench.portcullis
          audiences: [bench]
          keys:
            - pem_file: {path: $1/bench.pem, kid: bench, algorithms: [RS256]}
EOF
}

# bench_token BIN KEYS: an RS256 token for `bench_authenticator`'s provider, living 2 h, for
# bench-user of tenant acme, with the scope and roles `full_rule` asks for.
bench_token() {
    "$1" token mint --key "$2/bench.key" --alg RS256 --kid bench \
        --iss https://bench.portcullis --aud bench --sub bench-user --ttl 2h \
        --scope "orders:read" --claim tenant=acme --claim 'roles=["admin","ops"]'
}

# full_rule: the full gateway's rule (issue 4's load row), one entry of a `rules:` list: the
# cached RS256 token, a scope and a claim requirement, a CEL condition over a path parameter,
# a rate limit far above the load and identity headers, under /full/{tenant}/.
full_rule() {
    cat <<'EOF'
  - name: full
    match:
      paths: ["/full/{tenant}/**"]
      methods: [GET]
    effect: allow
    authenticators: [bench]
    require:
      scopes: {all_of: ["orders:read"]}
      claims: {tenant: {equals: acme}}
    when: params.tenant == claims.tenant && action == 'read'
    rate_limit: per-user
    identity_headers:
      x-user-roles: "{claims.roles}"
    upstream: app
EOF
}

# full_settings KEYS: what `full_rule` needs in the config: identity headers, the `per-user`
# limit and `bench_authenticator`.
full_settings() {
    cat <<EOF
identity_headers:
  x-user-id: "{principal.id}"
  x-tenant-id: "{claims.tenant}"
  x-real-client: "{client.ip}"
rate_limits:
  per-user:
    key: principal
    requests: 100000000
    per: 1s
EOF
    bench_authenticator "$1"
}

# door_gateway BIN DIR P_FA P_GRPC P_ADMIN: the decision doors' benchmark gateway in DIR (what
# bench/doors.sh and bench/door_instructions.sh measure): a forward-auth and an Envoy gRPC
# door, one rule, two identity headers, an RS256 key in DIR/keys; sets TOKEN to a token it
# accepts (cached after its first use).
door_gateway() {
    local bin=$1 dir=$2 p_fa=$3 p_grpc=$4 p_admin=$5
    mkdir -p "$dir/policies"
    "$bin" keys new --alg RS256 --kid bench --out "$dir/keys" >/dev/null
    TOKEN=$("$bin" token mint --key "$dir/keys/bench.key" --alg RS256 --kid bench \
        --iss https://bench.portcullis --aud bench --sub bench-user --ttl 2h --claim tenant=acme)
    cat >"$dir/policies/10-api.yaml" <<'EOF'
rules:
  - name: api
    match:
      paths: ["/api/**"]
      methods: [GET]
    effect: allow
    authenticators: [bench]
EOF
    cat >"$dir/portcullis.yaml" <<EOF
listeners:
  - name: forward-auth
    address: 127.0.0.1:$p_fa
    door: {forward_auth: {}}
  - name: grpc
    address: 127.0.0.1:$p_grpc
    door: {envoy_grpc: {}}
admin:
  address: 127.0.0.1:$p_admin
server:
  worker_threads: 1
policies:
  dir: policies
logging:
  level: warn
  access_log: false
identity_headers:
  x-user-id: "{principal.id}"
  x-tenant-id: "{claims.tenant}"
$(bench_authenticator "$dir/keys")
EOF
}

# CPU time a process (all its threads) has run, in ns (schedstat; works where perf counters
# do not). The servers share one CPU with each other and with anything else the machine runs,
# so under load req/s ratios drift toward 1; CPU per request does not.
cpu_ns() { # $1 pid, or empty for none
    local sum=0 t a
    [[ -n $1 ]] || { echo 0; return; }
    for t in /proc/"$1"/task/*/schedstat; do
        read -r a _ <"$t" 2>/dev/null && sum=$((sum + a))
    done
    echo "$sum"
}
