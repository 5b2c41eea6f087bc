#!/usr/bin/env bash
# tests/deploy/e2e_prometheus.sh (make e2e-prometheus): the rules in deploy/prometheus against a
# real Prometheus scraping real servers. Not part of `make test`; about 3 minutes.
#
#  1. Starts, on 127.0.0.1 and free ports:
#     - wattserve A: `target/release/wattserve serve --model minilm` (defaults);
#     - wattserve B: the same with limits.request_timeout_ms = 1, so that every inference is
#       answered 504 (an honest server error: the request passed its deadline);
#     - Prometheus (Debian's binary, unpacked by tests/deploy/tool.sh) scraping A, B and a port
#       nobody listens on (a down target), all as job "wattserve", every second, evaluating
#       deploy/prometheus/wattserve-rules.yml (unchanged) every second.
#  2. `wattserve bench` against A (8 clients, 20 s), then waits for the recording rule
#     wattserve:energy_per_request_joules:avg5m{model="minilm"} to be positive.
#  3. Sends a steady trickle of embeddings requests to B (504s) and waits, via /api/v1/alerts,
#     for WattserveErrorRatioHigh{model="minilm",severity="critical"} to fire (the rule's
#     `for: 2m`, so about 2 minutes) and for WattserveTargetDown on the dead port (also `for: 2m`,
#     counting from the start).
#
# Needs target/release/wattserve (built with `make release` if missing, unless a cargo build is
# running) and the minilm weights (`make models`). Logs and the Prometheus config are left in
# target/e2e-prometheus/. Exit status 0 when every check passed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
work="$root/target/e2e-prometheus"
bin="${WATTSERVE_BIN:-$root/target/release/wattserve}"
started=$(date +%s)

log() { echo "e2e-prometheus [$(($(date +%s) - started))s]: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

if [ ! -x "$bin" ]; then
  if pgrep -x cargo >/dev/null 2>&1; then
    die "$bin is missing and a cargo build is running: wait for it (or run 'make release') and retry"
  fi
  log "$bin is missing: make release"
  make release >&2
fi
[ -f models/minilm/weights/model.safetensors ] ||
  die "models/minilm/weights is missing: run 'make models'"

prometheus="$(tests/deploy/tool.sh prometheus)"
promtool="$(tests/deploy/tool.sh promtool)"

rm -rf "$work"
mkdir -p "$work"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_a=$(free_port); port_b=$(free_port); port_dead=$(free_port); port_prom=$(free_port)
prom="http://127.0.0.1:$port_prom"

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

cat >"$work/timeout.toml" <<EOF
# Every inference passes its deadline: 504.
[limits]
request_timeout_ms = 1
EOF

log "wattserve A on :$port_a, B (request_timeout_ms = 1) on :$port_b, dead target :$port_dead"
nice "$bin" serve --port "$port_a" --model minilm >"$work/wattserve-a.log" 2>&1 &
pids+=($!)
nice "$bin" serve --port "$port_b" --model minilm --config "$work/timeout.toml" \
  >"$work/wattserve-b.log" 2>&1 &
pids+=($!)

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $root/deploy/prometheus/wattserve-rules.yml
scrape_configs:
  - job_name: wattserve
    static_configs:
      - targets: ["127.0.0.1:$port_a", "127.0.0.1:$port_b", "127.0.0.1:$port_dead"]
EOF
"$promtool" check config "$work/prometheus.yml" >&2 || die "promtool check config failed"

log "Prometheus $("$prometheus" --version 2>&1 | head -n1 | awk '{print $3}') on :$port_prom"
nice "$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port_prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)

wait_http() { # URL SECONDS
  local deadline=$(($(date +%s) + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
wait_http "http://127.0.0.1:$port_a/ready" 120 || die "wattserve A not ready (see $work/wattserve-a.log)"
wait_http "http://127.0.0.1:$port_b/ready" 120 || die "wattserve B not ready (see $work/wattserve-b.log)"
wait_http "$prom/-/ready" 60 || die "Prometheus not ready (see $work/prometheus.log)"

# B must answer an inference with a server error, or the rest proves nothing.
embed_body='{"model":"minilm","input":"how much energy does this sentence cost?"}'
status_b=$(curl -s -o "$work/b-response.json" -w '%{http_code}' -H 'content-type: application/json' \
  -d "$embed_body" "http://127.0.0.1:$port_b/v1/embeddings")
[ "$status_b" = 504 ] || die "wattserve B answered $status_b, expected 504: $(cat "$work/b-response.json")"
log "B answers 504 as intended: $(cat "$work/b-response.json")"

# --- 2. load, and the energy-per-request recording rule ------------------------------------------
log "wattserve bench against A: 8 clients, 20 s"
nice "$bin" bench --url "http://127.0.0.1:$port_a" --target-model minilm --concurrency 8 \
  --duration 20 >"$work/bench.txt" 2>&1 || die "bench failed (see $work/bench.txt)"
cat "$work/bench.txt" >&2

query() { # PROMQL -> the first sample's value, or nothing
  curl -fsS --get "$prom/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "")'
}
energy=""
deadline=$(($(date +%s) + 30))
while :; do
  energy=$(query 'wattserve:energy_per_request_joules:avg5m{model="minilm"}')
  if [ -n "$energy" ] && python3 -c "import sys; sys.exit(0 if float('$energy') > 0 else 1)"; then
    break
  fi
  [ "$(date +%s)" -lt "$deadline" ] || die "wattserve:energy_per_request_joules:avg5m{model=\"minilm\"} is '${energy:-absent}', expected > 0"
  sleep 1
done
log "OK wattserve:energy_per_request_joules:avg5m{model=\"minilm\"} = $energy J"
for rule in 'wattserve:requests:rate5m{model="minilm",endpoint="embeddings"}' \
  'wattserve:co2e_grams_per_1k_requests:avg5m{model="minilm"}' \
  'wattserve:cost_usd_per_1k_requests:avg5m{model="minilm"}' \
  'wattserve:request_duration_seconds:p95_5m{model="minilm",endpoint="embeddings"}' \
  'wattserve:requests_errors:ratio_rate5m{model="minilm"}'; do
  log "   $rule = $(query "$rule")"
done

# --- 3. errors, and the alerts -------------------------------------------------------------------
log "sending a trickle of requests to B (504s) until WattserveErrorRatioHigh fires (for: 2m)"
python3 - "http://127.0.0.1:$port_b/v1/embeddings" "$embed_body" >"$work/errors.log" 2>&1 <<'EOF' &
import sys, time, urllib.request, urllib.error
url, body = sys.argv[1], sys.argv[2].encode()
counts = {}
while True:
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception:
        code = 0
    counts[code] = counts.get(code, 0) + 1
    if sum(counts.values()) % 100 == 0:
        print(counts, flush=True)
    time.sleep(0.05)
EOF
pids+=($!)

alerts() { # -> lines "alertname state label=value..." for firing and pending alerts
  curl -fsS "$prom/api/v1/alerts" | python3 -c 'import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    l = a["labels"]
    print(l["alertname"], a["state"], " ".join(f"{k}={v}" for k, v in sorted(l.items()) if k != "alertname"))'
}
error_fired=""; down_fired=""
deadline=$(($(date +%s) + 240))
while :; do
  current=$(alerts)
  if echo "$current" | grep -q "^WattserveErrorRatioHigh firing model=minilm severity=critical$"; then
    error_fired=yes
  fi
  if echo "$current" | grep -q "^WattserveTargetDown firing instance=127.0.0.1:$port_dead job=wattserve severity=critical$"; then
    down_fired=yes
  fi
  [ -n "$error_fired" ] && [ -n "$down_fired" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "alerts now:"; echo "$current" >&2
    die "WattserveErrorRatioHigh firing: ${error_fired:-no}; WattserveTargetDown firing: ${down_fired:-no}"
  fi
  sleep 2
done
log "OK WattserveErrorRatioHigh{model=\"minilm\",severity=\"critical\"} is firing"
log "OK WattserveTargetDown{instance=\"127.0.0.1:$port_dead\",severity=\"critical\"} is firing"
log "error ratio: $(query 'wattserve:requests_errors:ratio_rate5m{model="minilm"}'); requests sent to B: $(tail -n1 "$work/errors.log")"
log "alerts now:"
echo "$current" >&2
if echo "$current" | grep "^WattserveTargetDown" | grep -v "instance=127.0.0.1:$port_dead " >/dev/null; then
  die "WattserveTargetDown for a live server"
fi
curl -fsS "$prom/api/v1/alerts" | python3 -c 'import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    if a["labels"]["alertname"] == "WattserveErrorRatioHigh":
        print("  summary:", a["annotations"]["summary"])
        print("  runbook:", a["annotations"]["runbook"])' >&2
log "PASS (logs in $work)"
