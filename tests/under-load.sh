#!/usr/bin/env bash
# Run the test suite (README's test command) while two CPU-bound processes run beside it,
# as on a shared 2-core CI machine. Usage: tests/under-load.sh [RUNS] [pytest args...]
# Repeats the suite RUNS times (default 1) and stops at the first failing run.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
[ $# -gt 0 ] && shift
case "$runs" in ''|*[!0-9]*|0) echo "under-load.sh: RUNS must be a positive whole number" >&2; exit 2;; esac

hogs=()
stop_hogs() { [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null || true; }
trap stop_hogs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in 1 2; do
    python3 -c 'while True: pass' &
    hogs+=($!)
done
echo "under-load: 2 CPU-bound processes running (pids ${hogs[*]})"

for run in $(seq 1 "$runs"); do
    echo "under-load: run $run of $runs"
    start=$SECONDS
    python3 -m pytest -q "$@"
    echo "under-load: run $run passed in $((SECONDS - start)) s"
done
