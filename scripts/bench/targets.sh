# shellcheck shell=bash
# The brokers a client-workload step measures, one at a time (sourced by scripts/omb-bench.sh
# and scripts/lag-bench.sh, never run): a fresh Sluice (lib.sh's broker_launch), and with
# PEER=kafka Apache Kafka through scripts/kafka-peer.sh at its defaults (`kafka`) and with
# flush.messages=1 (`kafka_flush1`), as scripts/bench.sh's peer steps do.
#
# Kafka runs from a private KAFKA_HOME under BENCH_DIR whose lib is a link to the shared jars:
# kafka-peer.sh keeps its pid file in KAFKA_HOME and its `start` stops whatever that file names,
# so a shared home could stop another run's Kafka.
# Needs: ROOT BIN BENCH_DIR PORT ADMIN_PORT PEER_PORT, and lib.sh sourced. SLUICE_OVERRIDES:
# broker settings for Sluice (space-separated KEY=VALUE, each passed as --override);
# KAFKA_EXTRA_PROPS: the same for Kafka (added to its server properties).
# Must never: signal a process it did not start.

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_SHARED_HOME="${KAFKA_HOME:-$ROOT/.kafka}"
PEER_HOME="$BENCH_DIR/kafka-home"
TARGET_ADDR=""
TARGET_PID=""
TARGET_DATA=""
TARGET_RUNNING=""

# targets: sluice, plus the Kafka pair with PEER=kafka.
targets() {
    local all=(sluice)
    if [[ "${PEER:-}" == kafka ]]; then
        all+=(kafka kafka_flush1)
    elif [[ -n "${PEER:-}" ]]; then
        echo "PEER must be kafka" >&2
        return 1
    fi
    # TARGETS_ONLY="kafka_flush1": rerun some targets alone (their rows can be merged into an
    # earlier run's results by hand, e.g. after one target failed).
    local target chosen=()
    for target in "${all[@]}"; do
        if [[ -z "${TARGETS_ONLY:-}" || " $TARGETS_ONLY " == *" $target "* ]]; then
            chosen+=("$target")
        fi
    done
    if ((${#chosen[@]} == 0)); then
        echo "TARGETS_ONLY='$TARGETS_ONLY' names none of: ${all[*]} (the Kafka pair needs PEER=kafka)" >&2
        return 1
    fi
    printf '%s\n' "${chosen[@]}"
}

# load_targets: TARGETS set to what `targets` prints, or the script stops on its error (a
# `mapfile < <(targets)` would go on with none and write an empty section).
load_targets() {
    local listed
    listed="$(targets)" || exit 1
    mapfile -t TARGETS <<<"$listed"
}

peer_home_ready() {
    [[ -d "$PEER_HOME" ]] && return 0
    KAFKA_HOME="$KAFKA_SHARED_HOME" "$ROOT/scripts/kafka-peer.sh" fetch >&2
    mkdir -p "$PEER_HOME"
    ln -s "$KAFKA_SHARED_HOME/lib-$KAFKA_VERSION" "$PEER_HOME/lib-$KAFKA_VERSION"
    cp "$KAFKA_SHARED_HOME/log4j2.yaml" "$PEER_HOME/"
}

peer() { # kafka-peer.sh ARGS... with the private home and this step's ports
    KAFKA_HOME="$PEER_HOME" KAFKA_VERSION="$KAFKA_VERSION" KAFKA_PORT="$PEER_PORT" \
        KAFKA_CONTROLLER_PORT="$((PEER_PORT + 1))" KAFKA_DATA="$BENCH_DIR/kafka-data" \
        "$ROOT/scripts/kafka-peer.sh" "$@"
}

# sluice_launch: `sluice serve` on TARGET_DATA as it is (target_start empties it first).
sluice_launch() {
    local command=("$BIN" serve --data-dir "$TARGET_DATA" --listen "127.0.0.1:$PORT"
        --admin-listen "127.0.0.1:$ADMIN_PORT")
    local setting
    for setting in ${SLUICE_OVERRIDES:-}; do
        command+=(--override "$setting")
    done
    record_command "broker (sluice)" "${command[@]}"
    broker_launch "$BENCH_DIR/broker.log" "${command[@]}"
    broker_wait_ready "$BENCH_DIR/broker.log" 200 curl -sf "http://127.0.0.1:$ADMIN_PORT/stats" \
        || return 1
    TARGET_ADDR="127.0.0.1:$PORT"
    TARGET_PID="$BROKER_PID"
}

# target_drop_memory: forgets every record the running target holds in its own memory, so the
# next read comes from the files (and, once the page cache is dropped, from the disk). Sluice's
# tail cache lives in the process: it restarts on the same data. Kafka keeps no record data in
# its heap (it reads the page cache): nothing to do.
target_drop_memory() {
    if [[ "$TARGET_RUNNING" == sluice ]]; then
        broker_stop
        sluice_launch
    fi
}

# target_start TARGET: a fresh broker with an empty data directory; sets TARGET_ADDR,
# TARGET_PID (for CPU accounting) and TARGET_DATA (the directory its logs live in).
target_start() {
    local target="$1"
    case "$target" in
        sluice)
            TARGET_DATA="$BENCH_DIR/data"
            rm -rf "$TARGET_DATA"
            sluice_launch || return 1
            ;;
        kafka | kafka_flush1)
            local mode=default
            [[ "$target" == kafka_flush1 ]] && mode=durable
            peer_home_ready
            local shown=(scripts/kafka-peer.sh start "$mode")
            [[ -n "${KAFKA_EXTRA_PROPS:-}" ]] && shown=("KAFKA_EXTRA_PROPS='$KAFKA_EXTRA_PROPS'" "${shown[@]}")
            record_command "broker ($target)" "${shown[@]}"
            # One retry: the ports sit in the ephemeral range, and a client socket of an earlier
            # step holding one made Kafka's bind fail once (omb-bench, session 20).
            if ! KAFKA_EXTRA_PROPS="${KAFKA_EXTRA_PROPS:-}" peer start "$mode"; then
                echo "   kafka did not start; retrying once in 10 s" >&2
                sleep 10
                KAFKA_EXTRA_PROPS="${KAFKA_EXTRA_PROPS:-}" peer start "$mode" || return 1
            fi
            TARGET_DATA="$BENCH_DIR/kafka-data"
            TARGET_ADDR="127.0.0.1:$PEER_PORT"
            TARGET_PID="$(cat "$PEER_HOME/kafka.pid")"
            ;;
        *)
            echo "unknown target $target" >&2
            return 1
            ;;
    esac
    TARGET_RUNNING="$target"
}

# target_stop: stops the broker target_start started (nothing when none runs; safe in a trap)
# and removes its data.
target_stop() {
    case "$TARGET_RUNNING" in
        sluice) broker_stop ;;
        kafka | kafka_flush1) peer stop ;;
        *) return 0 ;;
    esac
    [[ -n "$TARGET_DATA" ]] && rm -rf "$TARGET_DATA"
    TARGET_RUNNING=""
    TARGET_PID=""
}

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# target_ports_free_or_die: the ports the targets listen on (PORT, ADMIN_PORT, PEER_PORT and
# the Kafka controller's PEER_PORT + 1) are free, or the script stops naming the one in use.
target_ports_free_or_die() {
    local port
    for port in "$PORT" "$ADMIN_PORT" "$PEER_PORT" "$((PEER_PORT + 1))"; do
        if ss -Htln "sport = :$port" 2>/dev/null | grep -q .; then
            echo "port $port is in use; pick others with BENCH_PORT, BENCH_ADMIN_PORT, PEER_PORT" >&2
            exit 1
        fi
    done
}

# fresh_bench_dir: BENCH_DIR wiped and made again, RESULTS and COMMANDS empty.
fresh_bench_dir() {
    rm -rf "$BENCH_DIR"
    mkdir -p "$BENCH_DIR"
    : >"$RESULTS"
    : >"$COMMANDS"
}

# finish_step SUMMARY SECTION SHAPE WHAT [ARG...]: the end of a client-workload step: its
# summary (`omb_lag.py SUMMARY`) on stderr and, when OUT_MD is set, its section written there
# (`omb_lag.py SECTION`, extra ARGs passed on). Needs START_S RESULTS OUT_MD INVOCATION COMMANDS
# HELPERS and the script's `say`.
finish_step() {
    local summary="$1" section="$2" shape="$3" what="$4"
    shift 4
    say "measured in $((SECONDS - START_S)) s (raw results: ${RESULTS#"$ROOT"/})"
    python3 "$HELPERS/omb_lag.py" "$summary" "$RESULTS" >&2
    if [[ -n "$OUT_MD" ]]; then
        python3 "$HELPERS/omb_lag.py" "$section" "$RESULTS" --out "$OUT_MD" --invocation "$INVOCATION" \
            --commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
            --commands "$COMMANDS" --load "$(cut -d' ' -f1-3 /proc/loadavg)" --shape "$shape" "$@"
        say "wrote the $what section into ${OUT_MD#"$ROOT"/}"
    fi
}
