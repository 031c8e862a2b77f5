#!/usr/bin/env bash
# Records the running broker with perf for --seconds and writes an SVG flame graph.
# Installs linux-perf (apt-get) and inferno (cargo install) when they are missing.
usage() {
    cat <<'USAGE'
usage: perf/flamegraph.sh [options] [--freq HZ]

Samples the broker's stacks (cpu-clock, DWARF unwinding) while it runs under load, then folds
them into a flame graph SVG.
  --freq HZ           samples per second per CPU (default 499)
USAGE
    perf_usage_common
}
# shellcheck source=perf/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
perf_parse_args "$@"

FREQ=499
set -- "${PERF_EXTRA[@]+"${PERF_EXTRA[@]}"}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --freq) FREQ="${2:?--freq needs a value}"; shift 2 ;;
        *) perf_die "unknown option '$1' (see --help)" ;;
    esac
done
[[ "$FREQ" =~ ^[0-9]+$ && "$FREQ" -ge 1 && "$FREQ" -le 10000 ]] || perf_die "--freq must be 1..10000"

perf_ensure_perf
perf_check_permissions
if ! command -v inferno-collapse-perf >/dev/null 2>&1 || ! command -v inferno-flamegraph >/dev/null 2>&1; then
    [[ -x "$HOME/.cargo/bin/inferno-flamegraph" ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v inferno-collapse-perf >/dev/null 2>&1 || ! command -v inferno-flamegraph >/dev/null 2>&1; then
    command -v cargo >/dev/null 2>&1 || perf_die "inferno is missing and cargo is not installed to build it"
    echo "inferno not found: cargo install inferno (a few minutes, once)" >&2
    cargo install inferno --locked >&2 || perf_die "cargo install inferno failed"
    export PATH="$HOME/.cargo/bin:$PATH"
fi
perf_find_broker

DATA="$PERF_OUT/perf.data"
SVG="$PERF_OUT/flamegraph.svg"
perf_start_load
echo "recording pid $PERF_PID for ${PERF_SECONDS}s at ${FREQ} Hz (cpu-clock, --call-graph dwarf)..."
# cpu-clock works with or without a hardware PMU; dwarf unwinding works without frame pointers
# (release builds keep debug line info: [profile.release] debug = 1).
perf record -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$PERF_PID" -o "$DATA" \
    -- sleep "$PERF_SECONDS" > "$PERF_OUT/record.log" 2>&1 \
    || { cat "$PERF_OUT/record.log" >&2; perf_die "perf record failed (log above)"; }
perf_stop_load
echo "folding stacks (perf script | inferno-collapse-perf)..."
perf script -i "$DATA" 2> "$PERF_OUT/script.log" | inferno-collapse-perf > "$PERF_OUT/stacks.folded"
[[ -s "$PERF_OUT/stacks.folded" ]] || perf_die "no samples: was the broker busy? (see $PERF_OUT/record.log)"
inferno-flamegraph --title "sluice pid $PERF_PID, ${PERF_SECONDS}s, ${FREQ} Hz cpu-clock" \
    < "$PERF_OUT/stacks.folded" > "$SVG"

samples="$(awk '{n += $NF} END {print n+0}' "$PERF_OUT/stacks.folded")"
echo
echo "flame graph:    $SVG"
echo "folded stacks:  $PERF_OUT/stacks.folded  (weights sum to $samples: cpu-clock periods, ns of CPU sampled)"
echo "raw recording:  $DATA  (perf report -i $DATA --no-children)"
echo
echo "hottest leaf frames (self time):"
awk '{ n = $NF; $NF = ""; sub(/ $/, ""); k = split($0, f, ";"); leaf[f[k]] += n; total += n }
     END { for (l in leaf) printf "%6.2f%%  %s\n", 100 * leaf[l] / total, l }' \
    "$PERF_OUT/stacks.folded" | sort -rn | head -n 12 | cut -c1-150
echo
echo "How to read it: open the SVG in a browser. Each box is a function; its width is the share"
echo "of samples in which it was on the stack, callers below, callees above. Wide boxes at the"
echo "top are where CPU time is spent; click to zoom, Ctrl-F to search (e.g. 'sluice')."
