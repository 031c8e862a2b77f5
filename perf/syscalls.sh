#!/usr/bin/env bash
# Counts the broker's syscalls by type over --seconds (perf trace -s, or the syscalls:
# tracepoints when perf trace is unavailable).
usage() {
    cat <<'USAGE'
usage: perf/syscalls.sh [options]

Counts every system call the broker makes in a window, by name, sorted by count, with
per-second rates, and in the same window every io_uring operation it submits, by opcode
(SPLICE, SEND_ZC, WRITE_FIXED, FSYNC, ...): work done through the rings makes no syscall of
its own, so the second table is where splices and sends show. perf trace's per-thread summary
(with times) is kept beside them.
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
OPS_DATA="$PERF_OUT/uring-ops.data"
OPS_TABLE="$PERF_OUT/uring-ops.txt"
READS_TABLE="$PERF_OUT/read-bytes.txt"
TRACE="$PERF_OUT/trace-summary.txt"
perf_start_load
echo "counting syscalls and io_uring operations of pid $PERF_PID for ${PERF_SECONDS}s (syscalls:sys_enter_* and io_uring:io_uring_submit_req tracepoints)..."
# The opcode of each submission is a string field of the tracepoint, which perf stat cannot
# split by: record the events (a few bytes each) beside the counting and group them after.
OPS_PID=""
tracepoints="$(perf list tracepoint 2>/dev/null || true)"
if grep -q 'io_uring:io_uring_submit_req' <<<"$tracepoints"; then
    # The read-type syscalls ride along so their byte counts can be summed: what tells a
    # 61-byte batch-header read from a copy of record bytes.
    reads=()
    for event in syscalls:sys_enter_read syscalls:sys_enter_pread64 syscalls:sys_enter_readv syscalls:sys_enter_preadv; do
        grep -q "$event" <<<"$tracepoints" && reads+=(-e "$event")
    done
    perf record -q -e io_uring:io_uring_submit_req "${reads[@]}" -p "$PERF_PID" -o "$OPS_DATA" -- sleep "$PERF_SECONDS" >/dev/null 2>&1 &
    OPS_PID=$!
fi
perf stat -x, -e 'syscalls:sys_enter_*' -p "$PERF_PID" -o "$RAW" -- sleep "$PERF_SECONDS" \
    || perf_die "perf stat failed (are the syscalls: tracepoints available? perf list syscalls)"
[[ -n "$OPS_PID" ]] && { wait "$OPS_PID" || true; }
perf_stop_load

awk -F, -v secs="$PERF_SECONDS" '
    /^#/ || NF < 3 { next }
    $1 ~ /^[0-9]+$/ && $1 > 0 { ev = $3; sub(/^syscalls:sys_enter_/, "", ev); n[ev] = $1; total += $1 }
    END {
        printf "%-28s %12s %12s %7s\n", "syscall", "count", "per_s", "share"
        for (e in n) printf "%-28s %12d %12.1f %6.1f%%\n", e, n[e], n[e] / secs, 100 * n[e] / total
        printf "%-28s %12d %12.1f\n", "TOTAL", total, total / secs
    }' "$RAW" | { read -r header; echo "$header"; sort -k2,2nr; } | tee "$TABLE"

if [[ -s "$OPS_DATA" ]]; then
    echo
    perf script -i "$OPS_DATA" -F trace 2>/dev/null \
        | sed -n 's/.*opcode \([A-Z0-9_]*\).*/\1/p' | sort | uniq -c \
        | awk -v secs="$PERF_SECONDS" '
            { n[$2] = $1; total += $1 }
            END {
                printf "%-28s %12s %12s %7s\n", "io_uring_op", "count", "per_s", "share"
                for (op in n) printf "%-28s %12d %12.1f %6.1f%%\n", op, n[op], n[op] / secs, 100 * n[op] / total
                printf "%-28s %12d %12.1f\n", "TOTAL", total, total / secs
            }' | { read -r header; echo "$header"; sort -k2,2nr; } | tee "$OPS_TABLE"
    echo
    # Bytes asked for by read-type syscalls (count field; iovec lengths are not visible, so
    # readv/preadv show calls only).
    perf script -i "$OPS_DATA" -F event,trace 2>/dev/null \
        | awk -v secs="$PERF_SECONDS" '
            function hex(text,    i, n) {
                n = 0
                for (i = 1; i <= length(text); i++) n = n * 16 + index("0123456789abcdef", substr(text, i, 1)) - 1
                return n
            }
            /sys_enter_(p)?read(v|64)?:/ {
                ev = $1; sub(/^syscalls:sys_enter_/, "", ev); sub(/:$/, "", ev)
                calls[ev]++
                if (match($0, /count: 0x[0-9a-f]+/)) bytes[ev] += hex(substr($0, RSTART + 9, RLENGTH - 9))
            }
            END {
                printf "%-28s %12s %14s %12s\n", "read_syscall", "calls", "bytes", "bytes/call"
                for (ev in calls) printf "%-28s %12d %14.0f %12.0f\n", ev, calls[ev], bytes[ev], bytes[ev] / calls[ev]
            }' | tee "$READS_TABLE"
else
    echo "(no io_uring:io_uring_submit_req events: this kernel lacks the tracepoint, or the broker submitted nothing)" | tee "$OPS_TABLE"
fi

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
echo "io_uring ops:    $OPS_TABLE"
echo "read bytes:      $READS_TABLE"
echo "raw perf output: $RAW"
echo
echo "How to read it: an io_uring broker should make few syscalls per request. io_uring_enter"
echo "dominates when it submits and reaps through its rings; many read/write/sendto/recvfrom,"
echo "epoll_wait or futex calls mean work is bypassing the rings or threads are waking each other."
echo "The io_uring_op table is the work done through the rings: on the zero-copy fetch path file"
echo "bytes show as SPLICE (file->pipe, pipe->socket) beside small READ ops (batch headers); the"
echo "copying path (fetch.zero.copy=false) shows READ ops of record bytes and WRITE ops instead."
echo "A pread64 from a shard thread would be a blocking read bypassing the ring."
echo "Divide per_s by the request rate (sluice stats --watch) for syscalls per request."
