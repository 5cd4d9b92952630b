#!/usr/bin/env bash
# The rig's own tests, as `make test` runs them: two pytest processes side by side.
#
#   lab   tests marked `lab`: RIG_LAB_WORKERS xdist workers (default 3), each with its own
#         session-scoped labs of booted QEMU guests (own folder, ports and device locks), whole
#         test files per worker (`--dist loadfile`: a file's tests run in order on one worker, as
#         several rely on the state the previous test of their file left), slowest files first
#         (tests/conftest.py LAB_FILES_SLOWEST_FIRST; `--no-loadscope-reorder` keeps that order),
#         at normal priority;
#   pure  everything else (parsers, rules, real sockets, sshd, ser2net, git, gpg...): one process
#         with xdist workers, at lower CPU priority, so the guests' heartbeats are never starved.
#
# Why: on a 2-core machine one lab process keeps about one core busy (boots, guest work) and waits
# the rest of the time (hang bounds, settle windows, soaks: BENCHMARKS.md, issue 11). Two lab workers
# still left the cores idle a quarter of the time (1,430 s of CPU in 985 s); a third fills most of
# that (make test 14:07 against 16:54-17:07 on clean clones, one run after the other on this 2-core
# VM; lab side 810 s against 985-995 s: BENCHMARKS.md, issue 11). Each worker costs one
# more boot of lab-1 and lab-2 (about 9 s of CPU) and 1-2 GB of guest RAM. Extra pytest arguments go to both
# (e.g. `make test PYTEST_ARGS="-x --durations=25"`). RIG_TEST_WORKERS sets the pure side's xdist
# workers (default 2; 0 runs it without xdist), RIG_LAB_WORKERS the lab side's (1 or 0: one process,
# one lab, in file order). The exit status is the first failing side's.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTEST=${PYTEST:-.venv/bin/pytest}
workers=${RIG_TEST_WORKERS:-2}
lab_workers=${RIG_LAB_WORKERS:-3}
pure_log=$(mktemp "${TMPDIR:-/tmp}/rig-pure-tests.XXXXXX.log")

xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers")
lab_xdist=()
case "$lab_workers" in
  0|1) ;;
  *) lab_xdist=(-n "$lab_workers" --dist loadfile --no-loadscope-reorder) ;;
esac

start=$(date +%s)
nice -n 10 "$PYTEST" -m "not lab" "${xdist[@]}" "$@" >"$pure_log" 2>&1 &
pure_pid=$!
# A ^C or a kill of this script must not leave the pure side running on its own.
trap 'kill "$pure_pid" 2>/dev/null; wait "$pure_pid" 2>/dev/null; exit 130' INT TERM

echo "== lab tests (${lab_workers} worker(s); pure tests run beside them, their output follows) =="
"$PYTEST" -m lab "${lab_xdist[@]}" "$@"
lab_rc=$?
lab_end=$(date +%s)

wait "$pure_pid"
pure_rc=$?
end=$(date +%s)

echo
echo "== pure tests (ran beside the lab tests; log: $pure_log) =="
cat "$pure_log"
echo
echo "rig tests: lab exit $lab_rc in $((lab_end - start)) s, pure exit $pure_rc, $((end - start)) s in all"
# pytest exits 5 when a side selected no test (e.g. PYTEST_ARGS picked one file): that is not a failure.
[ "$lab_rc" = 5 ] && lab_rc=0
[ "$pure_rc" = 5 ] && pure_rc=0
if [ "$lab_rc" != 0 ]; then exit "$lab_rc"; fi
exit "$pure_rc"
