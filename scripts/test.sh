#!/usr/bin/env bash
# The project's one test command (README, and .ci/run runs it):
#   1. installs what the tests need (scripts/setup-test-deps.sh: kcat, .venv, kafkajs);
#   2. cargo build --release, cargo test --workspace, cargo clippy -D warnings, cargo fmt --check,
#      and a few seconds of every fuzz target (scripts/fuzz.sh --smoke);
#   3. pytest tests/integration against target/release/sluice with real Kafka clients.
# Every phase runs even if an earlier one failed (except: no integration tests without a fresh
# release build); the exit status is non-zero if any phase failed, and the last line sums up.
#
# Usage: scripts/test.sh [PYTEST_ARGS...]     e.g. scripts/test.sh -k metadata -x
# Env:   SKIP_CARGO=1   skip the cargo phases (iterate on tests/integration; still builds sluice)
#        SKIP_SETUP=1   skip the install phase
#        SKIP_FUZZ=1    skip the fuzz-smoke phase
#        TEST_WORKERS=N pytest-xdist workers for the integration tests (default 2; 0 runs them
#                       in this process, one at a time). Tests start their own brokers on free
#                       ports and spend most of their time waiting, so two workers take about
#                       half the wall time on two cores; it also runs tests beside each other,
#                       which has found an ordering bug a serial run did not.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START_S=$SECONDS
declare -a SUMMARY=()
FAILED=0

phase() {
    # phase NAME CMD...: run CMD, record NAME=ok|FAILED.
    local name="$1"; shift
    local t0=$SECONDS
    printf '\n==> %s: %s\n' "$name" "$*"
    "$@"
    local rc=$?
    if [ $rc -eq 0 ]; then
        SUMMARY+=("$name=ok($((SECONDS - t0))s)")
    else
        SUMMARY+=("$name=FAILED(exit $rc)")
        FAILED=1
    fi
    return $rc
}

finish() {
    printf '\ntest.sh summary: %s; total %ss\n' "${SUMMARY[*]}" "$((SECONDS - START_S))"
    if [ $FAILED -ne 0 ]; then
        echo "test.sh: FAILED"
        exit 1
    fi
    echo "test.sh: all phases passed"
    exit 0
}

if [ "${SKIP_SETUP:-0}" != 1 ]; then
    phase setup bash scripts/setup-test-deps.sh || finish
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
BUILD_OK=0
phase build cargo build --release --quiet --bin sluice && BUILD_OK=1

if [ "${SKIP_CARGO:-0}" != 1 ]; then
    phase cargo-test cargo test --workspace --quiet
    phase clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
    phase fmt cargo fmt --all -- --check
    if [ "${SKIP_FUZZ:-0}" != 1 ]; then
        # fuzz/tests/corpus.rs is not run here: without cargo fuzz's instrumentation flags it
        # rebuilds the whole fuzz crate graph a second time (264 s cold on the 2-core VM,
        # against ~50 s for the smoke run with its build warm).
        phase fuzz-smoke bash scripts/fuzz.sh --smoke
    fi
fi

pytest_phase() {
    # pytest exits 5 when it collected no test: that is a failure here, not a pass.
    # The 25 slowest tests are listed at the end, to keep an eye on the suite's time.
    .venv/bin/python -m pytest tests/integration -q --durations=25 -n "${TEST_WORKERS:-2}" "$@"
    local rc=$?
    if [ $rc -eq 5 ]; then
        echo "pytest collected no tests: treating as a failure"
        return 5
    fi
    return $rc
}

if [ $BUILD_OK -eq 1 ]; then
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
    export SLUICE_BIN="${SLUICE_BIN:-$TARGET_DIR/release/sluice}"
    phase integration pytest_phase "$@"
else
    SUMMARY+=("integration=NOT-RUN(build failed)")
fi

finish
