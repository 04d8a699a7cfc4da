#!/usr/bin/env bash
# HTTP load benchmark: drives a real `dnsexfil serve` over loopback with wrk (Debian package),
# bounded in time. Prints throughput and latency percentiles for 100-row DSDL requests at 1, 16
# and 64 connections and for 100,000-row requests, then the server's peak and final RSS. wrk runs
# at a raised priority where permitted (see benches/http_bench.sh), and the 64-connection run is
# repeated at the server's priority for comparison. Exits non-zero if any answer of a run was
# not 2xx or was a DSDL error: figures of a run that failed requests would not mean anything.
# Usage: benches/load.sh [seconds-per-run]   (default 10; the weights come from tests/fixtures/escu)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
. benches/http_bench.sh
prepare_bench
# The server's warnings: a DSDL error answer is logged as "request failed".
server_log=$work/server.log
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
failed=0
# run_wrk WRK-COMMAND...: runs it, prints its summary, and notes a failure on any non-2xx answer
# (wrk prints the "Non-2xx or 3xx responses" line only when there were some).
run_wrk() {
  local out
  out=$("$@")
  grep -E "$summary" <<<"$out"
  if grep -q "Non-2xx" <<<"$out"; then
    echo "FAILED: answers other than 2xx in this run" >&2
    failed=1
  fi
}
if [ ${#prioritized[@]} -eq 0 ]; then
  echo "(wrk runs at the server's priority: raising it needs root or CAP_SYS_NICE)"
fi
for conns in 1 16 64; do
  echo "== 100-row requests, $conns connection(s), ${secs}s${prioritized:+, wrk at ${prioritized[*]}}"
  run_wrk "${prioritized[@]}" wrk -t"$(( conns < 2 ? 1 : 2 ))" -c"$conns" -d"${secs}s" --latency \
    -s "$work/post.lua" "http://127.0.0.1:$port" -- "$work/rows100.json"
done
if [ ${#prioritized[@]} -gt 0 ]; then
  echo "== 100-row requests, 64 connections, ${secs}s, wrk at the server's priority"
  run_wrk wrk -t2 -c64 -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port" \
    -- "$work/rows100.json"
fi
echo "== 100,000-row requests, 1 connection, $((secs * 2))s"
run_wrk "${prioritized[@]}" wrk -t1 -c1 -d"$((secs * 2))s" --timeout 30s --latency -s "$work/post.lua" \
  "http://127.0.0.1:$port" -- "$work/rows100k.json"
echo "peak RSS: $(rss VmHWM)"
sleep 2
echo "RSS after the runs: $(rss VmRSS)"
errors=$(grep -c -e "request failed" -e "request worker panicked" "$server_log" || true)
if [ "$errors" -gt 0 ]; then
  echo "FAILED: $errors DSDL error answers during the runs, e.g.:" >&2
  grep -m 3 -e "request failed" -e "request worker panicked" "$server_log" >&2
  failed=1
fi
exit "$failed"
