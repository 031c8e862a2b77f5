# shellcheck shell=bash
# Shared by perf/*.sh: argument parsing, finding the broker, installing perf, and the optional
# load run. Sourced, never executed. It must never target anything but 127.0.0.1 / localhost
# and never run longer than the --seconds it was given (plus tool start-up and reporting).

set -euo pipefail

PERF_SECONDS=10
PERF_PID=""
PERF_PID_FILE=""
PERF_OUT=""
PERF_LOAD=0
PERF_BOOTSTRAP="127.0.0.1:9092"
PERF_SLUICE=""
PERF_LOAD_ARGS=""
PERF_EXTRA=()

perf_usage_common() {
    cat <<'USAGE'
Common options:
  --seconds N         how long to measure (default 10)
  --pid PID           the broker process (default: --pid-file, else the one `sluice serve`)
  --pid-file FILE     read the broker's pid from FILE
  --out DIR           where to write results (default /tmp/sluice-perf/<script>-<time>)
  --load              also run `sluice bench produce` against the broker for the duration
  --bootstrap H:P     broker address for --load (default 127.0.0.1:9092; loopback only)
  --load-args "ARGS"  extra `sluice bench produce` flags for --load, e.g. "--acks 1 --record-size 100"
  --sluice PATH       the sluice binary for --load (default: target/release/sluice, then PATH)
  -h, --help          this help
USAGE
}

perf_die() { echo "$(basename "$0"): $*" >&2; exit 1; }

perf_parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --seconds) PERF_SECONDS="${2:?--seconds needs a value}"; shift 2 ;;
            --pid) PERF_PID="${2:?--pid needs a value}"; shift 2 ;;
            --pid-file) PERF_PID_FILE="${2:?--pid-file needs a value}"; shift 2 ;;
            --out) PERF_OUT="${2:?--out needs a value}"; shift 2 ;;
            --load) PERF_LOAD=1; shift ;;
            --bootstrap) PERF_BOOTSTRAP="${2:?--bootstrap needs a value}"; shift 2 ;;
            --sluice) PERF_SLUICE="${2:?--sluice needs a value}"; shift 2 ;;
            --load-args) PERF_LOAD_ARGS="${2:?--load-args needs a value}"; PERF_LOAD=1; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) PERF_EXTRA+=("$1"); shift ;;
        esac
    done
    [[ "$PERF_SECONDS" =~ ^[0-9]+$ && "$PERF_SECONDS" -ge 1 && "$PERF_SECONDS" -le 3600 ]] \
        || perf_die "--seconds must be a whole number from 1 to 3600, got '$PERF_SECONDS'"
    case "${PERF_BOOTSTRAP%:*}" in
        127.0.0.1|localhost) ;;
        *) perf_die "--bootstrap must be on 127.0.0.1 or localhost (load tests stay on loopback), got '$PERF_BOOTSTRAP'" ;;
    esac
    if [[ -z "$PERF_OUT" ]]; then
        PERF_OUT="/tmp/sluice-perf/$(basename "$0" .sh)-$(date +%Y%m%d-%H%M%S)"
    fi
    mkdir -p "$PERF_OUT"
}

# Resolves PERF_PID: --pid, else --pid-file, else exactly one `sluice serve` process.
perf_find_broker() {
    if [[ -z "$PERF_PID" && -n "$PERF_PID_FILE" ]]; then
        [[ -r "$PERF_PID_FILE" ]] || perf_die "cannot read pid file $PERF_PID_FILE"
        PERF_PID="$(tr -dc '0-9' < "$PERF_PID_FILE")"
    fi
    if [[ -z "$PERF_PID" ]]; then
        local pids
        pids="$(pgrep -f 'sluice serve' || true)"
        # Drop this script's own shell and anything that merely mentions the words.
        pids="$(for p in $pids; do
            [[ "$p" == "$$" ]] && continue
            [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == "sluice" ]] && echo "$p"
        done)"
        case "$(echo "$pids" | grep -c . || true)" in
            0) perf_die "no running 'sluice serve' found; start one or pass --pid PID" ;;
            1) PERF_PID="$pids" ;;
            *)
                echo "several 'sluice serve' processes are running; pick one with --pid:" >&2
                for p in $pids; do echo "  $p  $(tr '\0' ' ' < "/proc/$p/cmdline")" >&2; done
                exit 1 ;;
        esac
    fi
    [[ "$PERF_PID" =~ ^[0-9]+$ ]] || perf_die "not a pid: '$PERF_PID'"
    kill -0 "$PERF_PID" 2>/dev/null || perf_die "process $PERF_PID is not running (or not ours to inspect)"
    echo "target: pid $PERF_PID  $(tr '\0' ' ' < "/proc/$PERF_PID/cmdline" | cut -c1-160)"
}

# Installs perf (Debian: linux-perf) when it is missing or does not run.
perf_ensure_perf() {
    if command -v perf >/dev/null 2>&1 && perf --version >/dev/null 2>&1; then
        return
    fi
    echo "perf not found: installing linux-perf with apt-get" >&2
    command -v apt-get >/dev/null 2>&1 || perf_die "perf is missing and apt-get is not available; install your distribution's perf package"
    local sudo=""
    [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq linux-perf >&2 \
        || perf_die "apt-get install linux-perf failed"
    command -v perf >/dev/null 2>&1 || perf_die "linux-perf installed but 'perf' is still not on PATH"
}

# Says what stops perf from seeing the broker, if anything.
perf_check_permissions() {
    local paranoid
    paranoid="$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?')"
    if [[ "$(id -u)" -ne 0 && "$paranoid" != "?" && "$paranoid" -gt 1 ]]; then
        echo "note: kernel.perf_event_paranoid=$paranoid and you are not root; if perf fails," >&2
        echo "      run as root or: sudo sysctl kernel.perf_event_paranoid=1" >&2
    fi
}

# True when the kernel exposes hardware PMU counters (cycles); VMs often do not.
perf_has_hw_counters() {
    local out
    out="$(perf stat -x, -e cycles -- true 2>&1 >/dev/null || true)"
    ! grep -qE '<not supported>|<not counted>|not supported' <<<"$out" && grep -qE '^[0-9]+,' <<<"$out"
}

PERF_LOAD_PID=""

perf_sluice_bin() {
    if [[ -n "$PERF_SLUICE" ]]; then echo "$PERF_SLUICE"; return; fi
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [[ -x "$root/target/release/sluice" ]]; then echo "$root/target/release/sluice"; return; fi
    command -v sluice || perf_die "--load needs the sluice binary: cargo build --release, or pass --sluice PATH"
}

# With --load, starts `sluice bench produce` for the measurement window (plus a second of
# warm-up) in the background; its output goes to $PERF_OUT/load.log.
perf_start_load() {
    [[ "$PERF_LOAD" -eq 1 ]] || return 0
    local bin
    bin="$(perf_sluice_bin)"
    local duration=$((PERF_SECONDS + 2))
    # Word splitting of --load-args is intended: it is a list of flags.
    # shellcheck disable=SC2206
    local extra=($PERF_LOAD_ARGS)
    echo "load: $bin bench produce --bootstrap $PERF_BOOTSTRAP --duration ${duration}s ${extra[*]-} (log: $PERF_OUT/load.log)"
    "$bin" bench produce --bootstrap "$PERF_BOOTSTRAP" --duration "${duration}s" \
        --record-size 1024 --acks all --progress-interval-s 0 "${extra[@]+"${extra[@]}"}" \
        > "$PERF_OUT/load.log" 2>&1 &
    PERF_LOAD_PID=$!
    sleep 1
    kill -0 "$PERF_LOAD_PID" 2>/dev/null || {
        echo "load generator exited early; its log:" >&2
        cat "$PERF_OUT/load.log" >&2
        exit 1
    }
}

perf_stop_load() {
    [[ -n "$PERF_LOAD_PID" ]] || return 0
    # It stops by itself after --duration; give it that long, then end only our own child.
    local waited=0
    while kill -0 "$PERF_LOAD_PID" 2>/dev/null && [[ $waited -lt 10 ]]; do sleep 1; waited=$((waited + 1)); done
    kill "$PERF_LOAD_PID" 2>/dev/null || true
    wait "$PERF_LOAD_PID" 2>/dev/null || true
    echo "load summary (from $PERF_OUT/load.log):"
    tail -n 12 "$PERF_OUT/load.log" | sed 's/^/  /'
    PERF_LOAD_PID=""
}

trap 'perf_stop_load' EXIT
