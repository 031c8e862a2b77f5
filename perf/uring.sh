#!/usr/bin/env bash
# Counts io_uring submissions, completions and io_uring_enter syscalls per second from the
# kernel's tracepoints, for the running broker, every second for --seconds.
usage() {
    cat <<'USAGE'
usage: perf/uring.sh [options] [--system]

Counts per second, from kernel tracepoints:
  submissions  io_uring:io_uring_submit_req   (SQEs the kernel took from the rings)
  completions  io_uring:io_uring_complete     (CQEs posted)
  enters       syscalls:sys_enter_io_uring_enter (io_uring_enter(2) calls: submit and/or wait)
  waits        io_uring:io_uring_cqring_wait  (enters that blocked for completions)
  task_work    io_uring:io_uring_task_work_run
  --system     count on every CPU, all processes (completions posted from interrupt or kernel
               worker context are only attributed to the broker's pid when run by its threads)
USAGE
    perf_usage_common
}
# shellcheck source=perf/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
perf_parse_args "$@"
SYSTEM=0
for a in "${PERF_EXTRA[@]+"${PERF_EXTRA[@]}"}"; do
    case "$a" in
        --system) SYSTEM=1 ;;
        *) perf_die "unknown option '$a' (see --help)" ;;
    esac
done
perf_ensure_perf
perf_check_permissions

EVENTS=(io_uring:io_uring_submit_req io_uring:io_uring_complete syscalls:sys_enter_io_uring_enter
        io_uring:io_uring_cqring_wait io_uring:io_uring_task_work_run)
available="$(perf list tracepoint 2>/dev/null || true)"
for e in "${EVENTS[@]}"; do
    grep -q "$e" <<<"$available" || perf_die "tracepoint $e is not available: this kernel lacks io_uring tracepoints, or tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
done
if [[ "$SYSTEM" -eq 1 ]]; then
    TARGET=(-a)
    echo "target: whole system (--system)"
else
    perf_find_broker
    TARGET=(-p "$PERF_PID")
fi

RAW="$PERF_OUT/uring.csv"
TABLE="$PERF_OUT/uring.txt"
perf_start_load
echo "counting io_uring tracepoints for ${PERF_SECONDS}s, one row per second..."
IFS=, ; event_list="${EVENTS[*]}"; unset IFS
perf stat -x, -I 1000 -e "$event_list" "${TARGET[@]}" -o "$RAW" -- sleep "$PERF_SECONDS" \
    || perf_die "perf stat failed"
perf_stop_load

# perf -x, -I rows: time,count,unit,event,...; one row per event per interval.
awk -F, '
    /^#/ || NF < 4 { next }
    {
        t = $1 + 0; c = ($2 ~ /^[0-9]+$/) ? $2 : 0; ev = $4
        sub(/^.*:/, "", ev)
        if (!(t in seen)) { seen[t] = 1; order[++n] = t }
        v[t, ev] = c; total[ev] += c
    }
    END {
        printf "%8s %12s %12s %12s %10s %10s %10s\n", "time_s", "submit/s", "complete/s", "enter/s", "wait/s", "twork/s", "sqe/enter"
        for (i = 1; i <= n; i++) {
            t = order[i]
            s = v[t, "io_uring_submit_req"]; e = v[t, "sys_enter_io_uring_enter"]
            printf "%8.1f %12d %12d %12d %10d %10d %10s\n", t, s, v[t, "io_uring_complete"], e,
                v[t, "io_uring_cqring_wait"], v[t, "io_uring_task_work_run"],
                (e > 0) ? sprintf("%.1f", s / e) : "-"
        }
        secs = (n > 0) ? order[n] : 1
        printf "%8s %12d %12d %12d %10d %10d %10s\n", "mean/s", total["io_uring_submit_req"] / secs,
            total["io_uring_complete"] / secs, total["sys_enter_io_uring_enter"] / secs,
            total["io_uring_cqring_wait"] / secs, total["io_uring_task_work_run"] / secs,
            (total["sys_enter_io_uring_enter"] > 0) ? sprintf("%.1f", total["io_uring_submit_req"] / total["sys_enter_io_uring_enter"]) : "-"
    }' "$RAW" | tee "$TABLE"
echo
echo "per-second table: $TABLE"
echo "raw perf output:  $RAW"
echo
echo "How to read it: submit/s and complete/s are SQEs and CQEs per second; they should track"
echo "each other. sqe/enter is how many submissions each io_uring_enter(2) carried: the higher,"
echo "the better the batching (1.0 means one syscall per operation). wait/s counts enters that"
echo "slept waiting for completions. With SQPOLL, submissions happen without enters."
