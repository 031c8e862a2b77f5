#!/usr/bin/env bash
# Installs what the integration tests need, idempotently and quietly on re-runs:
#   - kcat, libfuse2 and strace (Debian packages), plus python3-venv / nodejs / npm if they are missing;
#   - a Python venv at .venv with tests/requirements.txt (confluent-kafka, kafka-python, pytest...);
#   - tests/js/node_modules from tests/js/package-lock.json (kafkajs);
#   - a JDK and Maven (Debian packages) and Apache Kafka's jars in the ignored .kafka/
#     (`scripts/kafka-peer.sh fetch`): Kafka's own tools and the Java client in
#     tests/integration/test_kafka_tools.py, Kafka Streams in test_streams.py, Connect and its
#     FileStream connectors in test_connect.py;
#   - librdkafka's own test runner (`scripts/librdkafka-tests.sh build`: the librdkafka that the
#     rdkafka-sys crate vendors, fetched with cargo and built into the ignored .librdkafka/ with
#     a C/C++ compiler and make, build-essential when missing) for test_librdkafka_suite.py;
#   - e2fsprogs when mkfs.ext4 is missing (the disk-full tests build a small ext4 image; without
#     it they skip);
#   - cargo-fuzz (scripts/fuzz.sh, the fuzz-smoke phase) at a pinned version, built from source
#     with --locked, only when that phase runs (not with SKIP_FUZZ=1 or SKIP_CARGO=1).
# Each step is skipped when a stamp of its inputs matches, so a second run does nothing.
# Needs root (or passwordless apt) only when a Debian package is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[setup-test-deps] %s\n' "$*"; }

APT_UPDATED=0
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
            log "need root to install Debian packages: $*"; return 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install $*"
    # Try with the lists the machine has; run `apt-get update` once, only if that fails.
    if $sudo apt-get install -y -qq "$@" >/tmp/sluice-apt.log 2>&1; then return 0; fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        $sudo apt-get update -qq >>/tmp/sluice-apt.log 2>&1 || { cat /tmp/sluice-apt.log; return 1; }
        APT_UPDATED=1
        if $sudo apt-get install -y -qq "$@" >>/tmp/sluice-apt.log 2>&1; then return 0; fi
    fi
    cat /tmp/sluice-apt.log
    return 1
}

# --- Debian packages ------------------------------------------------------------------------
command -v kcat >/dev/null 2>&1 || apt_install kcat
# libfuse 2 for fusepy: tests/integration/powerfs.py, the power-loss filesystem.
# ldconfig by full path: /sbin is not on a non-root user's PATH on Debian.
/sbin/ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2 ' || apt_install libfuse2
# mkfs.ext4 for test_disk_full.py's small filesystem (also looked for in /sbin).
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /sbin/mkfs.ext4 ] || apt_install e2fsprogs
# test_nonblocking.py traces the broker's shard threads for blocking reads.
command -v strace >/dev/null 2>&1 || apt_install strace
# ss (iproute2) for test_connections.py's look at the broker's socket buffers and backlog.
command -v ss >/dev/null 2>&1 || [ -x /sbin/ss ] || apt_install iproute2
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
# Kafka's tools and the Java client (test_kafka_tools.py): javac for its client program,
# Maven to fetch the jars.
command -v javac >/dev/null 2>&1 || apt_install default-jdk-headless
command -v mvn >/dev/null 2>&1 || apt_install maven
# librdkafka's test runner is C and C++, built with make.
if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1 \
    || ! command -v make >/dev/null 2>&1; then
    apt_install build-essential
fi
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3 python3-venv

# --- Python venv ------------------------------------------------------------------------------
VENV="$ROOT/.venv"
REQ="$ROOT/tests/requirements.txt"
req_stamp="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating venv at .venv"
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        apt_install python3-venv
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_stamp" ]; then
    log "pip install -r tests/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$req_stamp" >"$VENV/.requirements.sha256"
fi

# --- kafkajs ----------------------------------------------------------------------------------
JS="$ROOT/tests/js"
js_stamp="$(cat "$JS/package.json" "$JS/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$JS/node_modules/.sluice-stamp" 2>/dev/null)" != "$js_stamp" ]; then
    log "npm ci in tests/js"
    (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error >/tmp/sluice-npm.log 2>&1) \
        || { cat /tmp/sluice-npm.log; exit 1; }
    echo "$js_stamp" >"$JS/node_modules/.sluice-stamp"
fi

# --- Apache Kafka's jars ----------------------------------------------------------------------
# Idempotent: kafka-peer.sh skips the fetch when its lib folder is complete.
"$ROOT/scripts/kafka-peer.sh" fetch

# --- librdkafka's test runner -----------------------------------------------------------------
# Skipped when built for the pinned rdkafka-sys with the same flags (a stamp in its folder).
"$ROOT/scripts/librdkafka-tests.sh" build

# --- cargo-fuzz -------------------------------------------------------------------------------
# Runs on stable too (scripts/fuzz.sh sets RUSTC_BOOTSTRAP=1 and --sanitizer none there).
# Pinned, so every machine builds the targets with the same cargo-fuzz. Only when scripts/test.sh
# will run the fuzz-smoke phase: it skips it with SKIP_FUZZ=1 or SKIP_CARGO=1.
CARGO_FUZZ_VERSION=0.13.2
FUZZ_PHASE=1
if [ "${SKIP_FUZZ:-0}" = 1 ] || [ "${SKIP_CARGO:-0}" = 1 ]; then FUZZ_PHASE=0; fi
if [ "$FUZZ_PHASE" = 1 ] \
    && [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    log "cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# --- sanity: every client is usable -----------------------------------------------------------
kcat -V >/dev/null
"$VENV/bin/python" -c 'import confluent_kafka, kafka, pytest, pytest_timeout, crc32c, fuse' \
    || { log "python clients failed to import"; exit 1; }
(cd "$JS" && node -e 'require("kafkajs")') || { log "kafkajs failed to load"; exit 1; }
javac -version >/dev/null 2>&1 || { log "javac is not usable"; exit 1; }
"$ROOT/scripts/kafka-peer.sh" classpath >/dev/null || { log "Kafka's jars are missing"; exit 1; }
"$ROOT/scripts/librdkafka-tests.sh" runner >/dev/null \
    || { log "librdkafka's test runner is missing"; exit 1; }
if [ "$FUZZ_PHASE" = 1 ]; then
    cargo fuzz --version >/dev/null || { log "cargo-fuzz is not usable"; exit 1; }
fi
