#!/usr/bin/env bash
# HTTP load benchmark: drives a real `dnsexfil serve` over loopback with wrk (Debian package),
# bounded in time. Prints throughput and latency percentiles for 100-row DSDL requests at 1, 16
# and 64 connections and for 100,000-row requests, then the server's peak and final RSS.
# Usage: benches/load.sh [seconds-per-run]   (default 10; needs ../shared/artifacts for the weights)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
port=${DNSEXFIL_BENCH_PORT:-5077}
artifact=../shared/artifacts/detect_dns_data_exfiltration_using_pretrained_model_in_dsdl.tar.gz

if ! command -v wrk >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release --quiet
bin=target/release/dnsexfil
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" synth --rows 100 --seed 1 --envelope -o "$work/rows100.json"
"$bin" synth --rows 100000 --seed 2 --envelope -o "$work/rows100k.json"
cat > "$work/post.lua" <<'LUA'
-- A static request: wrk formats it once and sends the same bytes every time without calling
-- into Lua, so the load tool takes less of the CPU the server shares with it.
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.path = "/apply"
  wrk.headers["Authorization"] = "bench-token"
  wrk.headers["Content-Type"] = "application/json"
end
-- Little's law: requests really outstanding on average (throughput x mean latency). Near the
-- connection count when the load tool keeps every connection busy.
function done(summary, latency, requests)
  local rate = summary.requests / (summary.duration / 1e6)
  io.write(string.format("Outstanding requests on average: %.1f\n", rate * latency.mean / 1e6))
end
LUA

api_token=bench-token ENABLE_HTTPS=false RUST_LOG=warn "$bin" serve --host 127.0.0.1 --port "$port" \
  --model "$artifact" --data-dir "$work/data" &
server=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
rss() { awk -v k="$1" '$1 == k":" {print $2 / 1024 " MiB"}' "/proc/$server/status"; }
echo "idle RSS: $(rss VmRSS)"

# Every request of a run must succeed at the DSDL level too: check one before loading.
for f in rows100 rows100k; do
  curl -sf "http://127.0.0.1:$port/apply" -H "Authorization: bench-token" --data-binary "@$work/$f.json" \
    | grep -q '"status":"success"' || { echo "$f: the request does not succeed" >&2; exit 1; }
done

for conns in 1 16 64; do
  echo "== 100-row requests, $conns connection(s), ${secs}s"
  wrk -t"$(( conns < 2 ? 1 : 2 ))" -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port" -- "$work/rows100.json" \
    | grep -E "Requests/sec|Latency  |50%|90%|99%|requests in|Non-2xx|Socket errors|Outstanding"
done
echo "== 100,000-row requests, 1 connection, $((secs * 2))s"
wrk -t1 -c1 -d"$((secs * 2))s" --timeout 30s --latency -s "$work/post.lua" "http://127.0.0.1:$port" -- "$work/rows100k.json" \
  | grep -E "Requests/sec|Latency  |50%|90%|99%|requests in|Non-2xx|Socket errors|Outstanding"
echo "peak RSS: $(rss VmHWM)"
sleep 2
echo "RSS after the runs: $(rss VmRSS)"
