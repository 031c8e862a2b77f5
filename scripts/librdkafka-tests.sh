#!/usr/bin/env bash
# librdkafka's own integration test runner, built from the librdkafka source that the
# `rdkafka-sys` crate vendors, for tests/integration/test_librdkafka_suite.py (issue 13: the
# client's transaction and idempotence tests run against Sluice). Nothing of librdkafka's is
# committed: the crate comes through cargo (a throwaway package under the ignored .librdkafka/
# that depends on it, `cargo fetch`), its librdkafka/ is copied next to it and built there.
#
# Usage: scripts/librdkafka-tests.sh build    fetch and build (skipped when the stamp of the
#                                              version and build flags matches), then point
#                                              .librdkafka/test-runner at the runner
#        scripts/librdkafka-tests.sh runner   print the runner's path (fails if not built)
#        scripts/librdkafka-tests.sh perf     build examples/rdkafka_performance OPTIMIZED (-O2,
#                                              configure's default) in its own directory with its
#                                              own stamp, for scripts/bench/neutral-clients.sh
#                                              (issue 17), and print its path
# Env:   RDKAFKA_SYS_VERSION (default below)  LIBRDKAFKA_HOME (default .librdkafka; ignored)
#
# The build is as small as the selected tests allow (about 40 CPU-seconds, 20 s on two idle
# cores, plus the crate's download): no TLS, SASL, HTTP, zstd or zlib (no selected test uses
# them; lz4 and snappy are built in), -O0 and no debug symbols (the client's speed does not
# matter here), only the C and C++ libraries and the test runner (no examples). The runner
# always holds every test (test.c names them all); the pytest file picks which run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The newest rdkafka-sys; its build metadata names the librdkafka it vendors.
RDKAFKA_SYS_VERSION="${RDKAFKA_SYS_VERSION:-4.10.0+2.12.1}"
LIBRDKAFKA_HOME="${LIBRDKAFKA_HOME:-$ROOT/.librdkafka}"
LIBRDKAFKA_VERSION="${RDKAFKA_SYS_VERSION#*+}"
CRATE_VERSION="${RDKAFKA_SYS_VERSION%%+*}"
BUILD="$LIBRDKAFKA_HOME/$LIBRDKAFKA_VERSION"
RUNNER_LINK="$LIBRDKAFKA_HOME/test-runner"
JOBS="${LIBRDKAFKA_BUILD_JOBS:-2}"
CONFIGURE_FLAGS=(
    --no-download --disable-ssl --disable-gssapi --disable-curl --disable-zstd
    --disable-zlib --disable-lz4-ext --disable-optimization --disable-debug-symbols
)
STAMP="$BUILD/.sluice-built"
STAMP_TEXT="rdkafka-sys $RDKAFKA_SYS_VERSION; configure ${CONFIGURE_FLAGS[*]}"
# The perf tool's build: the same source, the same features left out, but optimized (the
# client's speed is what it measures). Only the C library and the one example are built.
PERF_BUILD="$LIBRDKAFKA_HOME/$LIBRDKAFKA_VERSION-perf"
PERF_CONFIGURE_FLAGS=(
    --no-download --disable-ssl --disable-gssapi --disable-curl --disable-zstd
    --disable-zlib --disable-lz4-ext --disable-debug-symbols
)
PERF_STAMP="$PERF_BUILD/.sluice-built"
PERF_STAMP_TEXT="rdkafka-sys $RDKAFKA_SYS_VERSION; configure ${PERF_CONFIGURE_FLAGS[*]}; rdkafka_performance"
PERF_BIN="$PERF_BUILD/examples/rdkafka_performance"

log() { echo "librdkafka-tests: $*" >&2; }

# The directory of the vendored librdkafka, fetched through cargo.
crate_source() {
    local fetch="$LIBRDKAFKA_HOME/fetch"
    mkdir -p "$fetch/src"
    # Its own [workspace]: cargo would otherwise take it for a stray member of Sluice's.
    cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "sluice-librdkafka-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
rdkafka-sys = { version = "=$CRATE_VERSION", default-features = false }
EOF
    : >"$fetch/src/lib.rs"
    (cd "$fetch" && cargo fetch --quiet) >&2
    # The crate's path comes from cargo itself: it depends on CARGO_HOME and the registry.
    (cd "$fetch" && cargo metadata --quiet --offline --format-version 1) | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
want = sys.argv[1]
for pkg in meta["packages"]:
    if pkg["name"] == "rdkafka-sys" and pkg["version"] == want:
        print(os.path.join(os.path.dirname(pkg["manifest_path"]), "librdkafka"))
        sys.exit(0)
sys.exit("rdkafka-sys " + want + " is not in cargo metadata")
' "$RDKAFKA_SYS_VERSION"
}

# compile_copy SRC DIR LOG CONFIGURE_FLAG... -- "MAKE_DIR TARGET"...: a fresh copy of SRC in
# DIR, configured with the flags, then each target made in its directory; the output goes to
# LOG, whose tail is shown (and the script stops) when a step fails.
compile_copy() {
    local src="$1" dir="$2" out="$3"
    shift 3
    local flags=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do flags+=("$1"); shift; done
    shift
    rm -rf "$dir"
    cp -r "$src" "$dir"
    if ! (cd "$dir" && ./configure "${flags[@]}" && for step in "$@"; do
            # shellcheck disable=SC2086 # "DIR TARGET": two words on purpose
            make -j"$JOBS" -C $step || exit 1
          done) >"$out" 2>&1; then
        tail -40 "$out" >&2
        log "build failed (full log: $out)"
        exit 1
    fi
}

build() {
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" \
            && -x "$BUILD/tests/test-runner" ]]; then
        ln -sfn "$BUILD/tests/test-runner" "$RUNNER_LINK"
        return 0
    fi
    local t0=$SECONDS src
    src="$(crate_source)"
    [[ -f "$src/tests/test.c" ]] || { log "no tests/ in $src"; exit 1; }
    log "building librdkafka $LIBRDKAFKA_VERSION's test runner (rdkafka-sys $RDKAFKA_SYS_VERSION)"
    compile_copy "$src" "$BUILD" "$LIBRDKAFKA_HOME/build-$LIBRDKAFKA_VERSION.log" \
        "${CONFIGURE_FLAGS[@]}" -- "src lib" "src-cpp lib" "tests test-runner"
    echo "$STAMP_TEXT" >"$STAMP"
    ln -sfn "$BUILD/tests/test-runner" "$RUNNER_LINK"
    log "built $BUILD/tests/test-runner in $((SECONDS - t0)) s"
}

perf() {
    if [[ -f "$PERF_STAMP" && "$(cat "$PERF_STAMP")" == "$PERF_STAMP_TEXT" && -x "$PERF_BIN" ]]; then
        echo "$PERF_BIN"
        return 0
    fi
    local t0=$SECONDS src
    src="$(crate_source)"
    [[ -f "$src/examples/rdkafka_performance.c" ]] || { log "no examples/rdkafka_performance.c in $src"; exit 1; }
    log "building librdkafka $LIBRDKAFKA_VERSION's rdkafka_performance, optimized (rdkafka-sys $RDKAFKA_SYS_VERSION)"
    compile_copy "$src" "$PERF_BUILD" "$LIBRDKAFKA_HOME/build-$LIBRDKAFKA_VERSION-perf.log" \
        "${PERF_CONFIGURE_FLAGS[@]}" -- "src lib" "examples rdkafka_performance"
    echo "$PERF_STAMP_TEXT" >"$PERF_STAMP"
    log "built $PERF_BIN in $((SECONDS - t0)) s"
    echo "$PERF_BIN"
}

case "${1:-}" in
    build) build ;;
    perf) perf ;;
    runner)
        [[ -x "$RUNNER_LINK" ]] \
            || { log "not built: run scripts/librdkafka-tests.sh build"; exit 1; }
        readlink -f "$RUNNER_LINK"
        ;;
    *) echo "usage: $0 build|runner|perf" >&2; exit 2 ;;
esac
