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
