# Shared by the HTTP benches (sourced, not run): installs wrk if missing, builds the service,
# makes a scratch directory with a 100-row DSDL request and wrk's request script, and starts
# `dnsexfil serve` on the published ESCU model.
# Sets: port, bin, work (scratch directory, removed on exit), server (the server's pid),
# prioritized (the command prefix that raises the load tool's priority, empty if not permitted).

port=${DNSEXFIL_BENCH_PORT:-5077}
artifact=tests/fixtures/escu/detect_dns_data_exfiltration_using_pretrained_model_in_dsdl.tar.gz

# wrk shares the two cores with the server. At the server's priority it often waits for a core
# before it reads an answer that has arrived, and that wait is counted in the request's latency
# (benches/latency_trace.sh measures it). A raised priority (root or CAP_SYS_NICE) lets wrk read
# answers as they arrive; it then preempts the server more often, which costs throughput, so
# load.sh prints the 64-connection run both ways.
prioritized=()
if [ "$(nice -n -10 nice 2>/dev/null)" = "-10" ]; then
  prioritized=(nice -n -10)
fi

prepare_bench() {
  if ! command -v wrk >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
  fi
  cargo build --release --quiet
  bin=target/release/dnsexfil
  work=$(mktemp -d)
  server=
  trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
  "$bin" synth --rows 100 --seed 1 --envelope -o "$work/rows100.json"
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
}

# start_server [VAR=value ...]: the server with these extra environment settings, once healthy.
# Its log (warnings and errors) goes to the file $server_log if set, else to stderr.
start_server() {
  env "$@" api_token=bench-token ENABLE_HTTPS=false RUST_LOG=warn "$bin" serve --host 127.0.0.1 \
    --port "$port" --model "$artifact" --data-dir "$work/data" 2>"${server_log:-/dev/stderr}" &
  server=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the server did not start on port $port (DNSEXFIL_BENCH_PORT picks another)" >&2
  exit 1
}
