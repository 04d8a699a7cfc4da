#!/usr/bin/env bash
# The model card's tables are what `dnsexfil evaluate` prints today: the leave-one-tool-out table,
# the same with the randomised family also left out, and the trained-on-everything table
# (`--tools none`), how the probability reads (`--reliability`), and the first and third for the
# long-window dnsexfil_v5. Reruns each (a few minutes on 2 cores) and fails on any difference.
# DNSEXFIL_BIN names a release binary to use (default: build one with cargo).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${DNSEXFIL_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --bin dnsexfil
  bin=target/release/dnsexfil
fi
dev=tests/fixtures/dev

# check MARKER ARGS...: the table between <!-- MARKER --> and <!-- /MARKER --> in models/README.md
# is what `dnsexfil evaluate ARGS...` prints, compared without the header row (the card may name
# the first column after what the table shows).
check() {
  local marker=$1
  shift
  local expected actual
  expected=$(sed -n "/<!-- $marker -->/,/<!-- \/$marker -->/p" models/README.md | grep '^|' | tail -n +2 || true)
  [ -n "$expected" ] || { echo "models/README.md has no table between <!-- $marker --> markers" >&2; exit 1; }
  table=$("$bin" evaluate --events "$dev/events.csv" --labels "$dev/labels.csv" "$@")
  actual=$(echo "$table" | tail -n +2)
  if [ "$expected" != "$actual" ]; then
    echo "models/README.md's table $marker differs from what dnsexfil evaluate $* prints:" >&2
    diff <(echo "$expected") <(echo "$actual") >&2 || true
    exit 1
  fi
  echo "model card: $marker reproduced ($(echo "$actual" | tail -n +2 | wc -l) rows)"
}

check lofo-table
# The same tools but the randomised family, which every run then also leaves out of training.
tools=$(echo "$table" | tail -n +3 | cut -d' ' -f2 | grep -vx randomised | paste -sd, -)
check lofo-table-without-randomised --also-leave-out randomised --tools "$tools"
check all-tools-table --tools none
check reliability-table --reliability
# The long-window model's (dnsexfil_v5's recipe).
check lofo-table-v5 --schema dnsexfil-v5
check all-tools-table-v5 --schema dnsexfil-v5 --tools none
