#!/usr/bin/env bash
# Run a command starved of CPU, as the pure tests are in `make test`: N busy loops (3 is what CI saw) at normal
# priority beside it, the command itself at nice 10 (tools/run-tests.sh runs the pure side so, beside the
# lab's guests). Use it to check that a new test's waits are guards against a hang, not timings:
#
#   tools/starved.sh 3 .venv/bin/pytest -m "not lab" -n 2 -q tests/test_power_pdu.py
#
# Why: CI's pure side once took 627 s where a quiet run takes 300 s, and a test that waited 30 s in all
# for a 1 MB console line failed there; three busy loops on this 2-core VM starve it about as much
# (the pure side 912 s, BENCHMARKS.md "make test on a clean clone"). The loops end with the command.
set -uo pipefail
loops=${1:?usage: tools/starved.sh N command [args...]}
shift
[ "$#" -gt 0 ] || { echo "usage: tools/starved.sh N command [args...]" >&2; exit 2; }
pids=()
for _ in $(seq 1 "$loops"); do
  python3 -c "while True: pass" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT INT TERM
nice -n 10 "$@"
