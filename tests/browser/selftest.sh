#!/usr/bin/env bash
# tests/browser/selftest.sh: checks tests/browser/check_page.mjs itself against small pages in a temp
# dir: a good page passes; a console.error, an empty chart, an image from http://example.com and a
# page that never sets dataset.ready each fail (and for the reason expected). An HTTP case serves
# the good page from 127.0.0.1 and checks that --header reaches the server.
# Usage: tests/browser/selftest.sh [TARGET_DIR]   (default target/browser; runs setup.sh on it first)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${1:-target/browser}"
./tests/browser/setup.sh "$target" >/dev/null
export BROWSER_MODULES="$root/$target/node_modules"
case "$target" in /*) BROWSER_MODULES="$target/node_modules" ;; esac

tmp="$(mktemp -d)"
server_pid=
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

chart() { # id title points...
  local id="$1" title="$2"; shift 2
  printf '<svg class="ws-chart" id="%s" width="300" height="100" viewBox="0 0 300 100"><title>%s</title>' "$id" "$title"
  local x=10 v
  for v in "$@"; do printf '<circle cx="%d" cy="%d" r="4" data-value="%s"/>' "$x" "$((100 - v))" "$v"; x=$((x + 40)); done
  printf '</svg>\n'
}
page() { # file body-extra script
  cat >"$tmp/$1" <<HTML
<!doctype html><html><head><meta charset="utf-8"><title>Self-test $1</title></head><body>
<h1>Energy report</h1><p>Joules per request</p>
$(chart energy "Energy per request" 10 40 25 70)
$(chart latency "Latency p99" 5 15 30)
$2
<script>$3</script>
</body></html>
HTML
}
ready='document.documentElement.dataset.ready = "true";'
page good.html '' "setTimeout(() => { $ready }, 100);"
page console.html '' "console.error('boom'); $ready"
page empty.html "$(chart empty 'Empty chart')" "$ready"
page external.html '<img src="http://example.com/pixel.png" alt="">' "window.addEventListener('load', () => { $ready });"
page never.html '' ''

fails=0
# expect NAME pass|fail PYTHON-CHECK ARGS...: runs check_page.mjs, checks the exit status and that
# the JSON line satisfies a Python expression over `r`.
expect() {
  local name="$1" want="$2" check="$3"; shift 3
  local out rc=0 t0 t1
  t0=$(date +%s%N)
  out="$(node tests/browser/check_page.mjs --screenshot "$tmp/$name.png" "$@")" || rc=$?
  t1=$(date +%s%N)
  local ms=$(( (t1 - t0) / 1000000 ))
  local got=pass; [ "$rc" -eq 0 ] || got=fail
  if [ "$rc" -gt 1 ]; then got="error (exit $rc)"; fi
  if [ "$got" = "$want" ] && python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if eval(sys.argv[2]) else 1)' "$out" "$check"; then
    echo "selftest: $name: $got as expected (${ms} ms)"
  else
    echo "selftest: $name: FAILED: wanted $want with $check, got $got (${ms} ms): $out" >&2
    fails=$((fails + 1))
  fi
}

f="file://$tmp"
expect good pass 'len(r["charts"]) == 2 and r["charts"][0] == {"id": "energy", "title": "Energy per request", "points": 4} and r["title"] == "Self-test good.html" and r["screenshot"]' \
  --url "$f/good.html" --min-charts 2 --text 'Energy report' --text 'Joules per request'
expect missing-text fail 'r["missing_text"] == ["Not on the page"]' --url "$f/good.html" --text 'Not on the page'
expect too-few-charts fail 'r["ready"] and "wanted at least 3" in r["error"]' --url "$f/good.html" --min-charts 3
expect console-error fail 'any("boom" in e for e in r["console_errors"])' --url "$f/console.html"
expect empty-chart fail 'r["charts"][-1]["points"] == 0 and "empty" in r["error"]' --url "$f/empty.html" --min-charts 1
expect external fail 'any(u.startswith("http://example.com/") for u in r["external_requests"])' --url "$f/external.html"
expect never-ready fail 'not r["ready"] and "not ready" in r["error"] and r["screenshot"]' --url "$f/never.html" --timeout-ms 1500

# Over HTTP, with a header the server insists on.
port_file="$tmp/port"
python3 - "$tmp" "$port_file" <<'PY' &
import http.server, socketserver, sys, os
root, port_file = sys.argv[1], sys.argv[2]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k): super().__init__(*a, directory=root, **k)
    def log_message(self, *a): pass
    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer selftest":
            self.send_error(401); return
        super().do_GET()
with socketserver.TCPServer(("127.0.0.1", 0), H) as s:
    open(port_file + ".tmp", "w").write(str(s.server_address[1])); os.rename(port_file + ".tmp", port_file)
    s.serve_forever()
PY
server_pid=$!
for _ in $(seq 50); do [ -f "$port_file" ] && break; sleep 0.1; done
port="$(cat "$port_file")"
expect http-header pass 'r["charts"][1]["points"] == 3' \
  --url "http://127.0.0.1:$port/good.html" --header 'Authorization: Bearer selftest' --min-charts 2
expect http-no-header fail 'any("HTTP 401" in e for e in r["failed_requests"])' \
  --url "http://127.0.0.1:$port/good.html" --timeout-ms 1500

if [ "$fails" -ne 0 ]; then echo "selftest: $fails case(s) FAILED" >&2; exit 1; fi
echo "selftest: all cases passed"
