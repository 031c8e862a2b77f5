# shellcheck shell=bash
# Broker lifecycle for the benchmark scripts (sourced by scripts/bench.sh, txn-bench.sh,
# fetch-bench.sh and idle-conns-bench.sh, never run): one broker process at a time, its PID in
# BROKER_PID; and record_command, the exact command lines a report quotes.
# Must never: signal any process but the one broker_launch started (no kill by name).

BROKER_PID=""

# broker_launch LOG COMMAND...: starts COMMAND (a `sluice serve` line, after `env VAR=...` or a
# wrapper such as taskset that execs it) in the background, output appended to LOG.
broker_launch() {
    local log="$1"
    shift
    "$@" >>"$log" 2>&1 &
    BROKER_PID=$!
}

# broker_wait_ready LOG TRIES PROBE...: runs PROBE every 0.1 s until it succeeds. Fails (status
# 1, with the end of LOG) as soon as the broker has exited, or after TRIES probes.
broker_wait_ready() {
    local log="$1" tries="$2"
    shift 2
    local _
    for _ in $(seq 1 "$tries"); do
        "$@" >/dev/null 2>&1 && return 0
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            echo "the broker exited at start-up; the end of $log:" >&2
            tail -5 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the broker did not come up within $tries probes; see $log" >&2
    return 1
}

# broker_stop: SIGTERM (a clean shutdown) and wait; nothing when no broker runs. Safe in an EXIT
# trap.
broker_stop() {
    [[ -n "$BROKER_PID" ]] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# record_command SCENARIO COMMAND...: keeps the first command line of each scenario in
# $COMMANDS, with $BIN and $ROOT/ written as such.
declare -A RECORDED=()
record_command() {
    local scenario="$1"
    shift
    [[ -n "${RECORDED[$scenario]:-}" ]] && return 0
    RECORDED[$scenario]=1
    local line="$*"
    line="${line//$BIN/\$BIN}"
    line="${line//$ROOT\//}"
    printf '# %s\n%s\n' "$scenario" "$line" >>"$COMMANDS"
}

# reap_deleted_topics DIR: gives back the disk space of the topics Apache Kafka renamed to
# *-delete under DIR, the data directory of a peer this script started. Kafka 4.1 removes them
# only file.delete.delay.ms later and, here, often later still; at ~1 GB/s they filled the disk
# within a minute. Their .log files are truncated to nothing (Kafka holds them open, so only a
# truncation frees the blocks at once) and Kafka removes the files and directories itself, as
# it must: a directory removed under it fails its log dir and stops the broker. The indexes
# are left alone: they are memory-mapped, and truncating a mapped file kills the JVM (SIGBUS).
# No-op when DIR does not exist.
reap_deleted_topics() {
    [[ -d "$1" ]] || return 0
    find "$1" -mindepth 2 -maxdepth 2 -path '*-delete/*' -type f -name '*.log' \
        -exec truncate -s 0 {} + 2>/dev/null || true
}

# default_fill_bytes: half the machine's memory, what Sluice's tail caches take together by
# default (log.tail.cache.bytes); a fresh broker's warm-up writes this much.
default_fill_bytes() {
    awk '/^MemTotal:/ { printf "%.0f", $2 * 1024 / 2 }' /proc/meminfo
}

# warm_up_broker BIN ADDR TOPIC BYTES OUT_BASE FLAGS...: BYTES of records (FLAGS: the
# `sluice bench produce` flags, 1 KiB records among them) into TOPIC (16 partitions), before a
# fresh broker's first measured run: Sluice's tail cache takes its memory
# as records arrive (each new page faulted in and zeroed once, then reused) and Kafka's page
# cache fills the same way, so the runs after it measure the steady state a long-running broker
# is in. The report goes to OUT_BASE.json (OUT_BASE.err); the caller deletes TOPIC. No-op below
# one record.
warm_up_broker() {
    local bin="$1" addr="$2" topic="$3" bytes="$4" out="$5"
    shift 5
    (( bytes >= 1024 )) || return 0
    local command=("$bin" bench produce --bootstrap "$addr" --json --progress-interval-s 0 "$@"
        --topic "$topic" --partitions 16 --records "$(( bytes / 1024 ))")
    record_command warm-up "${command[@]}"
    "${command[@]}" >"$out.json" 2>"$out.err" \
        || { echo "   warm-up of $addr failed: $(tail -1 "$out.err")" >&2; return 1; }
}
