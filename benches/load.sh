#!/usr/bin/env bash
# HTTP load benchmark: drives a real `dnsexfil serve` over loopback with wrk (Debian package),
# bounded in time. Prints throughput and latency percentiles for 100-row DSDL requests at 1, 16
# and 64 connections and for 100,000-row requests, then the server's peak and final RSS. wrk runs
# at a raised priority where permitted (see benches/http_bench.sh), and the 64-connection run is
# repeated at the server's priority for comparison.
# Usage: benches/load.sh [seconds-per-run]   (default 10; the weights come from tests/fixtures/escu)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
. benches/http_bench.sh
prepare_bench
"$bin" synth --rows 100000 --seed 2 --envelope -o "$work/rows100k.json"
start_server
rss() { awk -v k="$1" '$1 == k":" {print $2 / 1024 " MiB"}' "/proc/$server/status"; }
echo "idle RSS: $(rss VmRSS)"

# Every request of a run must succeed at the DSDL level too: check one before loading.
for f in rows100 rows100k; do
  curl -sf "http://127.0.0.1:$port/apply" -H "Authorization: bench-token" --data-binary "@$work/$f.json" \
    | grep -q '"status":"success"' || { echo "$f: the request does not succeed" >&2; exit 1; }
done

summary="Requests/sec|Latency  |50%|90%|99%|requests in|Non-2xx|Socket errors|Outstanding"
if [ ${#prioritized[@]} -eq 0 ]; then
  echo "(wrk runs at the server's priority: raising it needs root or CAP_SYS_NICE)"
fi
for conns in 1 16 64; do
  echo "== 100-row requests, $conns connection(s), ${secs}s${prioritized:+, wrk at ${prioritized[*]}}"
  "${prioritized[@]}" wrk -t"$(( conns < 2 ? 1 : 2 ))" -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" \
    "http://127.0.0.1:$port" -- "$work/rows100.json" | grep -E "$summary"
done
if [ ${#prioritized[@]} -gt 0 ]; then
  echo "== 100-row requests, 64 connections, ${secs}s, wrk at the server's priority"
  wrk -t2 -c64 -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port" -- "$work/rows100.json" \
    | grep -E "$summary"
fi
echo "== 100,000-row requests, 1 connection, $((secs * 2))s"
"${prioritized[@]}" wrk -t1 -c1 -d"$((secs * 2))s" --timeout 30s --latency -s "$work/post.lua" \
  "http://127.0.0.1:$port" -- "$work/rows100k.json" | grep -E "$summary"
echo "peak RSS: $(rss VmHWM)"
sleep 2
echo "RSS after the runs: $(rss VmRSS)"
