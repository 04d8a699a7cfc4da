#!/usr/bin/env bash
# The model card's leave-one-tool-out table is what `dnsexfil evaluate` prints today: reruns it
# (about 5 minutes on 2 cores) and fails on any difference; likewise its trained-on-everything
# table (`evaluate --tools none`, under a minute). DNSEXFIL_BIN names a release binary
# to use (default: build one with cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${DNSEXFIL_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --bin dnsexfil
  bin=target/release/dnsexfil
fi
dev=tests/fixtures/dev

expected=$(sed -n '/<!-- lofo-table -->/,/<!-- \/lofo-table -->/p' models/README.md | grep '^|' || true)
[ -n "$expected" ] || { echo "models/README.md has no table between <!-- lofo-table --> markers" >&2; exit 1; }

actual=$("$bin" evaluate --events "$dev/events.csv" --labels "$dev/labels.csv")
if [ "$expected" != "$actual" ]; then
  echo "models/README.md's leave-one-tool-out table differs from what dnsexfil evaluate prints:" >&2
  diff <(echo "$expected") <(echo "$actual") >&2 || true
  exit 1
fi
echo "model card: leave-one-tool-out table reproduced ($(echo "$actual" | tail -n +3 | wc -l) tools)"

# The "trained on everything" table: `evaluate --tools none`, compared without the header row
# (the card names its first column differently).
expected=$(sed -n '/<!-- all-tools-table -->/,/<!-- \/all-tools-table -->/p' models/README.md | grep '^|' | tail -n +2 || true)
[ -n "$expected" ] || { echo "models/README.md has no table between <!-- all-tools-table --> markers" >&2; exit 1; }
actual=$("$bin" evaluate --events "$dev/events.csv" --labels "$dev/labels.csv" --tools none | tail -n +2)
if [ "$expected" != "$actual" ]; then
  echo "models/README.md's trained-on-everything table differs from dnsexfil evaluate --tools none:" >&2
  diff <(echo "$expected") <(echo "$actual") >&2 || true
  exit 1
fi
echo "model card: trained-on-everything table reproduced"
