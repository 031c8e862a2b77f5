#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (one per decoder Sluice runs on untrusted bytes; see
# fuzz/src/lib.rs) and prints, per target, executions, exec/s, corpus size and findings.
#
# Usage: scripts/fuzz.sh --smoke                 each target ~5 s, unoptimised build (the test
#                                                command's phase)
#        scripts/fuzz.sh --runs N [TARGET...]    N executions per target (e.g. 10000000)
#        scripts/fuzz.sh --seconds N [TARGET...] N seconds per target
# Options: --asan      nightly toolchain + AddressSanitizer (default for --runs/--seconds when a
#                      nightly toolchain is installed); --no-asan forces stable, no sanitizer.
#
# Built with debug assertions (overflow checks included): an arithmetic overflow on input-driven
# values is a finding. One libFuzzer process at a time, on one core (no -jobs/-workers): the figures are per core.
# Seeds are read from fuzz/corpus/<target>/ (kept in the repository, never written here); what a
# run discovers goes to fuzz/target/corpus-work/<target>/ and crashes to fuzz/artifacts/<target>/.
# --smoke starts from the seeds alone, in a fresh temporary working corpus, with a fixed -seed:
# libFuzzer replays its whole working corpus before -max_total_time counts, so a corpus-work grown
# by long runs would make the smoke phase unbounded, and a random seed would make it unrepeatable.
# Every run has libFuzzer's -rss_limit_mb (and -malloc_limit_mb, which only a sanitizer build
# enforces) set, so memory driven by input beyond them is a finding, not just a slow run.
# On stable Rust (no nightly installed) cargo fuzz runs with RUSTC_BOOTSTRAP=1 and
# --sanitizer none: only the sanitizers need nightly flags. Needs cargo-fuzz
# (scripts/setup-test-deps.sh installs it).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
# The fuzz crate is its own workspace with its own target directory: a CARGO_TARGET_DIR meant
# for the main workspace would mix instrumented and plain builds.
unset CARGO_TARGET_DIR

ALL_TARGETS=(request_header produce_request fetch_request record_batch metadata_log
    group_records group_snapshot dispatch)
MODE=""
AMOUNT=0
ASAN=auto
# Long runs use an optimised build; the smoke run (the test command's phase) an unoptimised one,
# which builds in less than half the time (its 5 s per target need no speed).
PROFILE=release
SMOKE=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) MODE=seconds; AMOUNT=5; ASAN=no; PROFILE=dev; SMOKE=1 ;;
        --runs) MODE=runs; AMOUNT="${2:?--runs N}"; shift ;;
        --seconds) MODE=seconds; AMOUNT="${2:?--seconds N}"; shift ;;
        --asan) ASAN=yes ;;
        --no-asan) ASAN=no ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) TARGETS+=("$1") ;;
    esac
    shift
done
[ -n "$MODE" ] || { echo "fuzz.sh: give --smoke, --runs N or --seconds N" >&2; exit 2; }
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: run scripts/setup-test-deps.sh" >&2
    exit 2
fi
if [ "$ASAN" = auto ]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then ASAN=yes; else ASAN=no; fi
fi
if [ "$ASAN" = yes ]; then
    FUZZ=(cargo +nightly fuzz)
    SANITIZER=address
else
    export RUSTC_BOOTSTRAP=1
    FUZZ=(cargo fuzz)
    SANITIZER=none
fi

echo "==> building fuzz targets ($PROFILE, sanitizer: $SANITIZER)"
if [ "$PROFILE" = dev ]; then
    "${FUZZ[@]}" build --dev --sanitizer "$SANITIZER" || exit 1
    BUILT_DIR="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/debug"
else
    "${FUZZ[@]}" build --debug-assertions --sanitizer "$SANITIZER" || exit 1
    BUILT_DIR="$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release"
fi
# Run hard links of the binaries, so a rebuild during a long run changes nothing under it: the
# linker writes a new file and cargo replaces the old name (unlink, then link), which leaves the
# inode linked here untouched. A link costs nothing; a copy was ~1 GB per run. Copy only where
# links fail (another filesystem).
BIN_DIR="$ROOT/fuzz/target/run-bin-$$"
mkdir -p "$BIN_DIR"
SMOKE_DIR=""
trap 'rm -rf "$BIN_DIR" ${SMOKE_DIR:+"$SMOKE_DIR"}' EXIT
for target in "${TARGETS[@]}"; do
    cp -l "$BUILT_DIR/$target" "$BIN_DIR/" 2>/dev/null || cp "$BUILT_DIR/$target" "$BIN_DIR/" \
        || exit 1
done
if [ "$SMOKE" -eq 1 ]; then
    SMOKE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sluice-fuzz-smoke.XXXXXX")" || exit 1
fi

RSS_LIMIT_MB=2048
MALLOC_LIMIT_MB=512
declare -a ROWS=()
FAILED=0
for target in "${TARGETS[@]}"; do
    seeds="$ROOT/fuzz/corpus/$target"
    artifacts="$ROOT/fuzz/artifacts/$target"
    log="$ROOT/fuzz/target/fuzz-$target.log"
    if [ "$SMOKE" -eq 1 ]; then
        work="$SMOKE_DIR/$target"
        repeatable=(-seed=1)
    else
        work="$ROOT/fuzz/target/corpus-work/$target"
        repeatable=()
    fi
    mkdir -p "$work" "$artifacts"
    if [ "$MODE" = runs ]; then limit=(-runs="$AMOUNT"); else limit=(-max_total_time="$AMOUNT"); fi
    echo "==> $target: ${limit[*]} ${repeatable[*]}"
    # Findings of this run only: the artifacts directory keeps those of every earlier run.
    started="$BIN_DIR/started-$target"
    touch "$started"
    "$BIN_DIR/$target" "$work" "$seeds" \
        "${limit[@]}" ${repeatable[@]+"${repeatable[@]}"} -max_len=16384 -timeout=10 \
        -rss_limit_mb=$RSS_LIMIT_MB -malloc_limit_mb=$MALLOC_LIMIT_MB -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    rc=$?
    stat() { grep -o "stat::$1: *[0-9]*" "$log" | grep -o '[0-9]*$' | tail -1; }
    runs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    seconds=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | awk '{print $5}' | tail -1)
    # The last status line says "corp: UNITS/SIZE" for the merged (seeds + found) corpus.
    corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
    findings=$(find "$artifacts" -type f -newer "$started" | wc -l)
    if [ $rc -ne 0 ]; then
        FAILED=1
        echo "fuzz.sh: $target FAILED (exit $rc); the end of $log:"
        tail -40 "$log"
    fi
    ROWS+=("$(printf '%-16s %12s %8s %10s %14s %9s %s' "$target" "${runs:-0}" "${seconds:-?}" \
        "${rate:-?}" "${corpus:-?}" "$findings" "$([ $rc -eq 0 ] && echo ok || echo FAILED)")")
done

printf '\n%-16s %12s %8s %10s %14s %9s %s\n' target executions seconds exec/s corpus findings status
printf '%s\n' "${ROWS[@]}"
exit $FAILED
