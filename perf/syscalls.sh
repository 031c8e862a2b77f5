#!/usr/bin/env bash
# Counts the broker's syscalls by type over --seconds (perf trace -s, or the syscalls:
# tracepoints when perf trace is unavailable).
usage() {
    cat <<'USAGE'
usage: perf/syscalls.sh [options]

Counts every system call the broker makes in a window, by name, sorted by count, with
per-second rates; perf trace's per-thread summary (with times) is kept beside it.
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

RAW="$PERF_OUT/syscalls.csv"
TABLE="$PERF_OUT/syscalls.txt"
TRACE="$PERF_OUT/trace-summary.txt"
perf_start_load
echo "counting syscalls of pid $PERF_PID for ${PERF_SECONDS}s (syscalls:sys_enter_* tracepoints)..."
perf stat -x, -e 'syscalls:sys_enter_*' -p "$PERF_PID" -o "$RAW" -- sleep "$PERF_SECONDS" \
    || perf_die "perf stat failed (are the syscalls: tracepoints available? perf list syscalls)"
perf_stop_load

awk -F, -v secs="$PERF_SECONDS" '
    /^#/ || NF < 3 { next }
    $1 ~ /^[0-9]+$/ && $1 > 0 { ev = $3; sub(/^syscalls:sys_enter_/, "", ev); n[ev] = $1; total += $1 }
    END {
        printf "%-28s %12s %12s %7s\n", "syscall", "count", "per_s", "share"
        for (e in n) printf "%-28s %12d %12.1f %6.1f%%\n", e, n[e], n[e] / secs, 100 * n[e] / total
        printf "%-28s %12d %12.1f\n", "TOTAL", total, total / secs
    }' "$RAW" | { read -r header; echo "$header"; sort -k2,2nr; } | tee "$TABLE"

# Per-thread summary with latencies, when this perf has a working `trace` (needs
# libtraceevent); a short second window so the whole script stays bounded.
trace_secs=$(( PERF_SECONDS < 5 ? PERF_SECONDS : 5 ))
if perf trace -s -p "$PERF_PID" -o "$TRACE" -- sleep "$trace_secs" > /dev/null 2>&1 && [[ -s "$TRACE" ]]; then
    echo
    echo "per-thread summary with syscall times (${trace_secs}s, perf trace -s): $TRACE"
else
    rm -f "$TRACE"
fi
echo
echo "syscall table:   $TABLE"
echo "raw perf output: $RAW"
echo
echo "How to read it: an io_uring broker should make few syscalls per request. io_uring_enter"
echo "dominates when it submits and reaps through its rings; many read/write/sendto/recvfrom,"
echo "epoll_wait or futex calls mean work is bypassing the rings or threads are waking each other."
echo "Divide per_s by the request rate (sluice stats --watch) for syscalls per request."
