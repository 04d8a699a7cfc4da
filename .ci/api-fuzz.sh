#!/usr/bin/env bash
# Validates openapi/openapi.json and fuzzes a live `dnsexfil serve` against it with schemathesis.
# Fails on any 5xx, any response that breaks the document, and every other schemathesis check
# (all are on; .ci/schemathesis.toml lists the few documented exceptions).
# Python tools live in a venv under target/ (created on first use, from PyPI).
#
#   .ci/api-fuzz.sh                 # ~25 examples per operation, fixed seed
#   API_FUZZ_EXAMPLES=200 API_FUZZ_SEED=7 .ci/api-fuzz.sh
#   DNSEXFIL_BIN=target/release/dnsexfil .ci/api-fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/api-fuzz-venv
if ! "$venv/bin/python" -c 'import schemathesis, openapi_spec_validator' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<1' 'schemathesis>=4.3,<5'
fi

echo "== validating openapi/openapi.json"
"$venv/bin/openapi-spec-validator" openapi/openapi.json

bin=${DNSEXFIL_BIN:-}
if [[ -z "$bin" ]]; then
  cargo build --quiet --bin dnsexfil
  bin=target/debug/dnsexfil
fi

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting $bin on 127.0.0.1:$port"
api_token=$token ENABLE_HTTPS=false "$bin" serve --host 127.0.0.1 --port "$port" \
  --data-dir "$work/data" --log-format json >"$work/server.log" 2>&1 &
server_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 1 100); do
  if curl -sf "$base/readyz" >/dev/null; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server.log" >&2; exit 1; fi
  sleep 0.2
done
curl -sf "$base/readyz" >/dev/null || { echo "the server did not become ready" >&2; cat "$work/server.log" >&2; exit 1; }

echo "== the served document is the committed one"
curl -sf "$base/openapi.json" | cmp - openapi/openapi.json

echo "== schemathesis"
status=0
"$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run openapi/openapi.json \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --max-examples "${API_FUZZ_EXAMPLES:-25}" \
  --seed "${API_FUZZ_SEED:-42}" \
  --request-timeout 60 \
  --workers 1 \
  --no-color \
  --report junit --report-dir "target/api-fuzz-report" || status=$?

if grep -q '"level":"ERROR"' "$work/server.log"; then
  echo "the server logged errors:" >&2
  grep '"level":"ERROR"' "$work/server.log" | head -20 >&2
  status=1
fi
if grep -qF "$token" "$work/server.log"; then
  echo "the token appears in the server log" >&2
  status=1
fi
exit "$status"
