#!/usr/bin/env bash
# Where the latency of 100-row requests goes under load: runs `dnsexfil serve` and wrk as
# benches/load.sh does, records the server's and wrk's socket syscalls for 1.5 s in the middle
# of the run (perf tracepoints; needs root or perf_event_paranoid <= -1), and splits each
# request's latency into waiting for the server, the server's own time, and wrk's delay in
# reading the answer (benches/latency_trace.py). Tracing slows both sides by 10 to 30%.
# Usage: benches/latency_trace.sh [connections]   (default 64)
# Environment: WORKERS (the server's async workers, default: one per core), WRK_THREADS
# (default 2), RAISED=1 (wrk at the raised priority load.sh gives it), DNSEXFIL_BENCH_PORT
# (default 5077).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-64}
command -v perf >/dev/null || { echo "perf is needed (Debian: linux-perf)" >&2; exit 1; }
. benches/http_bench.sh
prepare_bench
start_server ${WORKERS:+TOKIO_WORKER_THREADS=$WORKERS}
load=(-t"${WRK_THREADS:-2}" -c"$conns" --latency -s "$work/post.lua" "http://127.0.0.1:$port")
wrk -d2s "${load[@]}" -- "$work/rows100.json" >/dev/null
wrk_prefix=()
if [ "${RAISED:-0}" = 1 ]; then wrk_prefix=("${prioritized[@]}"); fi
"${wrk_prefix[@]}" wrk -d6s "${load[@]}" -- "$work/rows100.json" > "$work/wrk.txt" &
wrk_pid=$!
sleep 2
# Only these two processes (and all their threads).
perf record -q -p "$server,$wrk_pid" -o "$work/trace.data" \
  -e syscalls:sys_enter_recvfrom,syscalls:sys_exit_recvfrom,syscalls:sys_enter_writev \
  -e syscalls:sys_enter_read,syscalls:sys_exit_read,syscalls:sys_enter_write \
  -- sleep 1.5 >/dev/null 2>&1
wait "$wrk_pid"
echo "== wrk over the whole run (6 s, the trace is 1.5 s of it)"
grep -E "Requests/sec|Latency  |50%|90%|99%" "$work/wrk.txt"
echo "== from the trace"
perf script -i "$work/trace.data" 2>/dev/null | python3 benches/latency_trace.py
