#!/usr/bin/env bash
# perf stat counters for the running broker over --seconds: cycles, instructions, context
# switches, CPU migrations, page faults, task clock. Says so when the machine has no PMU.
usage() {
    cat <<'USAGE'
usage: perf/stat.sh [options]

Counts what the broker's threads did over a window: CPU time, context switches, page faults,
and (when the machine has hardware counters) cycles, instructions and IPC.
USAGE
    perf_usage_common
}
# shellcheck source=perf/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
perf_parse_args "$@"
[[ ${#PERF_EXTRA[@]} -eq 0 ]] || perf_die "unknown option '${PERF_EXTRA[0]}' (see --help)"
perf_ensure_perf
perf_check_permissions
perf_find_broker

EVENTS="task-clock,context-switches,cpu-migrations,page-faults,minor-faults,major-faults"
if perf_has_hw_counters; then
    HW=1
    EVENTS="cycles,instructions,branches,branch-misses,$EVENTS"
else
    HW=0
    echo
    echo "NOTE: this machine exposes no hardware performance counters (a VM without a virtual PMU):"
    echo "      cycles, instructions and IPC cannot be measured here. Software counters below are"
    echo "      exact. For instruction counts use valgrind --tool=callgrind; for CPU profiles use"
    echo "      perf/flamegraph.sh (it samples cpu-clock, which needs no PMU)."
    echo
fi
OUT="$PERF_OUT/stat.txt"
perf_start_load
echo "counting pid $PERF_PID for ${PERF_SECONDS}s: $EVENTS"
perf stat -e "$EVENTS" -p "$PERF_PID" -o "$OUT" -- sleep "$PERF_SECONDS" \
    || perf_die "perf stat failed"
perf_stop_load
cat "$OUT"
echo "counters written to: $OUT"
echo
echo "How to read it: task-clock in msec over ${PERF_SECONDS}s is CPU time; divided by 1000*seconds"
echo "it is the number of CPUs kept busy (the 'CPUs utilized' column). context-switches per second"
echo "should stay low for a thread-per-core broker (each is a shard giving up its core);"
echo "page-faults after warm-up mean fresh memory is being touched on the hot path."
if [[ "$HW" -eq 1 ]]; then
    echo "insn per cycle (IPC) under ~1 suggests stalls on memory; branch-misses over ~2% hurt."
fi
