#!/usr/bin/env bash
# What a user waits for: a 100,000-row DSDL /apply (the dev log repeated to 100,000 rows) over
# loopback HTTP to a real `dnsexfil serve`, timed by curl, for the ESCU model and the default
# model, and /v1/score with the same 100,000 events as NDJSON; in the same run, alternating,
# the forward pass of the same rank-1 rows by candle (the `forward` bench) and by numpy/OpenBLAS.
# Prints best and median of each, the ratios, and per-stage times (the server's debug log).
# Also times the same /apply against a server that does no work (benches/http_floor.rs): what
# HTTP alone costs a request of that size.
# Usage: benches/http_roundtrip.sh [rounds]   (default 7; DNSEXFIL_BENCH_PORT if 5077 or the port
# after it is taken)
# numpy goes into a virtualenv under the target directory (pip, from PyPI) on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
rows=${ROWS:-100000}
port=${DNSEXFIL_BENCH_PORT:-5077}
artifact=tests/fixtures/escu/detect_dns_data_exfiltration_using_pretrained_model_in_dsdl.tar.gz
escu_name=detect_dns_data_exfiltration_using_pretrained_model_in_dsdl
default_name=dnsexfil_v7
target=${CARGO_TARGET_DIR:-target}

if [ -n "${NO_BUILD:-}" ]; then
  # The binaries as last built (for a run while the sources are being changed).
  forward=$(ls -t "$target"/release/deps/forward-* | grep -v '\.d$' | head -1)
  floor=$(ls -t "$target"/release/deps/http_floor-* | grep -v '\.d$' | head -1)
else
  cargo build --release --quiet
  bench_binary() {
    cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
  }
  forward=$(bench_binary forward)
  floor=$(bench_binary http_floor)
fi
bin=$target/release/dnsexfil
venv=$target/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet numpy
fi
py=$venv/bin/python

work=$(mktemp -d)
server=
floor_server=
trap 'for p in $server $floor_server; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
"$py" benches/http_roundtrip.py prepare tests/fixtures/dev/events.csv "$work" "$rows" \
  "$escu_name" "$default_name"

# The per-stage timings are debug events of the handlers, in the JSON log.
log=$work/server.log
api_token=bench-token ENABLE_HTTPS=false RUST_LOG=warn,dnsexfil::http::stages=debug,dnsexfil::http::dsdl=debug,dnsexfil::http::v1=debug "$bin" serve \
  --host 127.0.0.1 --port "$port" --model "$artifact" --data-dir "$work/data" \
  --log-format json 2>"$log" >>"$log" &
server=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/healthz" >/dev/null \
  || { echo "the server did not start on port $port (DNSEXFIL_BENCH_PORT picks another)" >&2; exit 1; }
for f in apply_escu apply_default; do
  curl -sf "http://127.0.0.1:$port/apply" -H "Authorization: bench-token" -H "Expect:" \
    --data-binary "@$work/$f.json" | grep -q '"status":"success"' \
    || { echo "$f: the request does not succeed" >&2; exit 1; }
done
# The transport floor: a server on the same HTTP stack doing no work, answering as many bytes
# as the default model's /apply does (benches/http_floor.rs), on the next port.
floor_port=$((port + 1))
answer_bytes=$(curl -sf "http://127.0.0.1:$port/apply" -H "Authorization: bench-token" -H "Expect:" \
  --data-binary "@$work/apply_default.json" | wc -c)
coproc FLOOR { exec "$floor" "$floor_port" "$answer_bytes"; }
floor_server=$FLOOR_PID
ready=
read -r ready <&"${FLOOR[0]}" || true
[ "$ready" = ready ] || { echo "the floor server did not start on port $floor_port" >&2; exit 1; }
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" benches/http_roundtrip.py run "$work" "$port" bench-token "$log" "$rounds" "$escu_name" \
  "$floor_port" "$forward" "$work/rows.csv" "$work" escu=escu default=default
echo "server RSS: peak $(awk '$1 == "VmHWM:" {print $2 / 1024 " MiB"}' "/proc/$server/status")"
