#!/usr/bin/env bash
# Instructions per plain proxied request under callgrind, for one binary: runs the gateway
# (one worker thread, one allow-all rule) twice, with N1 and N2 keep-alive GETs from one
# client, and prints (Ir(N2) - Ir(N1)) / (N2 - N1): startup and shutdown cancel out, and the
# figure does not move with the machine's load as req/s does (two runs agree within 0.2%).
#
#   target/perf/portcullis echo --listen 127.0.0.1:18480 &     # the upstream (any HTTP server)
#   bench/callgrind.sh target/perf/portcullis after             # or a binary built from main
#
# Env: N1 (300), N2 (2300). Uses ports 18481 and 18482.
set -euo pipefail
BIN=${1:?usage: bench/callgrind.sh BIN TAG [UPSTREAM_PORT]}; TAG=${2:?tag}; UP=${3:-18480}; N1=${N1:-300}; N2=${N2:-2300}
D=${TMPDIR:-/tmp}/portcullis-callgrind/$TAG; rm -rf "$D"; mkdir -p "$D/policies"
cat > "$D/policies/10-all.yaml" <<'Y'
rules:
  - name: all
    match:
      paths: ["/**"]
    effect: allow
    anonymous: true
    upstream: app
Y
cat > "$D/portcullis.yaml" <<Y
listeners:
  - name: http
    address: 127.0.0.1:18481
admin:
  address: 127.0.0.1:18482
server:
  worker_threads: 1
upstreams:
  app:
    url: http://127.0.0.1:$UP
policies:
  dir: policies
logging:
  level: warn
  access_log: false
Y
run() {
  local n=$1
  valgrind --tool=callgrind --callgrind-out-file="$D/cg.$n" "$BIN" run -c "$D/portcullis.yaml" --no-watch >"$D/log.$n" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do curl -fs http://127.0.0.1:18482/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  python3 - "$n" <<'P'
import http.client, sys
n = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", 18481)
for i in range(n):
    c.request("GET", "/", headers={"User-Agent": "cg", "Accept": "*/*"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
P
  kill -TERM $pid; wait $pid || true
  grep -E "^(summary|totals):" "$D/cg.$n" | head -1 | awk '{print $2}'
}
a=$(run "$N1"); b=$(run "$N2")
echo "$TAG Ir($N1)=$a Ir($N2)=$b per_request=$(( (b - a) / (N2 - N1) ))"
