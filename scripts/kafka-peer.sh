#!/usr/bin/env bash
# Apache Kafka beside Sluice on this machine: its jars fetched with Maven into an ignored folder,
# a single-node KRaft broker started and stopped on demand, and Kafka's own command-line tools
# run from the same jars. It is the peer of the benchmarks (issue 17) and the source of the tools
# the compatibility tests point at Sluice (issue 14). Nothing of Kafka's is committed.
#
# Usage: scripts/kafka-peer.sh fetch              jars into $KAFKA_HOME/lib (idempotent; a lib
#                                                 fetched before an artifact was added to the
#                                                 list gets the missing jars added)
#        scripts/kafka-peer.sh start [durable]    format a fresh data dir and start the broker
#                                                 (durable: log.flush.interval.messages=1, i.e.
#                                                 flush.messages=1 on every topic: fsync per
#                                                 append, comparable with Sluice's acks=all)
#        scripts/kafka-peer.sh stop               stop it (SIGTERM, then SIGKILL after 30 s)
#        scripts/kafka-peer.sh tool NAME ARGS...  one of Kafka's tools, by its script's name
#                                                 without `.sh` (kafka-topics, kafka-configs,
#                                                 kafka-consumer-groups, kafka-get-offsets, ...)
#        scripts/kafka-peer.sh classpath          print the classpath (for Java test programs)
# Env:   KAFKA_VERSION (default 4.1.1)  KAFKA_HOME (default .kafka; ignored by git)
#        KAFKA_PORT / KAFKA_CONTROLLER_PORT (default 9192 / 9193, on 127.0.0.1)
#        KAFKA_DATA (default $KAFKA_HOME/data; wiped by start)  KAFKA_HEAP (default 1G)
#        KAFKA_EXTRA_PROPS  broker settings added by start, space-separated KEY=VALUE
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_HOME="${KAFKA_HOME:-$ROOT/.kafka}"
KAFKA_PORT="${KAFKA_PORT:-9192}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9193}"
KAFKA_DATA="${KAFKA_DATA:-$KAFKA_HOME/data}"
KAFKA_HEAP="${KAFKA_HEAP:-1G}"
LIB="$KAFKA_HOME/lib-$KAFKA_VERSION"

log() { echo "kafka-peer: $*" >&2; }

# Bump when the artifact list below changes: a lib without this stamp is topped up.
FETCH_STAMP=".complete-2"

fetch() {
    if [[ -f "$LIB/$FETCH_STAMP" ]]; then
        return 0
    fi
    mkdir -p "$KAFKA_HOME"
    # The broker (kafka_2.13 pulls the server, raft, storage and coordinators), the tools,
    # Kafka Streams and Connect's FileStream connectors (connect-runtime comes with the tools),
    # and log4j2 behind slf4j 2 (Kafka 4 logs through log4j2; without a binding slf4j prints NOP).
    cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sluice.peer</groupId><artifactId>kafka-peer</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-streams</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-file</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
  </dependencies>
</project>
EOF
    log "fetching Apache Kafka $KAFKA_VERSION jars with Maven into $LIB"
    # Jars already there are kept (Maven skips existing release jars), so a JVM running from
    # this lib while it is topped up keeps its files.
    mvn -q -B -f "$KAFKA_HOME/pom.xml" -Dmaven.repo.local="$KAFKA_HOME/m2" \
        dependency:copy-dependencies -DoutputDirectory="$LIB" -DincludeScope=runtime >&2
    cat >"$KAFKA_HOME/log4j2.yaml" <<'EOF'
Configuration:
  Appenders:
    Console:
      name: STDERR
      target: SYSTEM_ERR
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDERR
EOF
    touch "$LIB/$FETCH_STAMP"
}

java_run() {
    java -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.yaml" -cp "$LIB/*" "$@"
}

start() {
    local mode="${1:-default}"
    fetch
    stop >/dev/null 2>&1 || true
    rm -rf "$KAFKA_DATA"
    mkdir -p "$KAFKA_DATA"
    local props="$KAFKA_HOME/server.properties"
    cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
# A deleted topic's files go after 1 s, not Kafka's 60 s: the benchmarks delete each topic once
# measured, and at ~1 GB/s a minute of deleted-but-kept segments fills this disk. Nothing a
# workload measures depends on it.
file.delete.delay.ms=1000
EOF
    local setting
    for setting in ${KAFKA_EXTRA_PROPS:-}; do
        [[ "$setting" == *=* ]] || { log "KAFKA_EXTRA_PROPS: '$setting' is not KEY=VALUE"; exit 2; }
        echo "$setting" >>"$props"
    done
    if [[ "$mode" == durable ]]; then
        # Kafka's broker-wide default of the topic config flush.messages.
        echo "log.flush.interval.messages=1" >>"$props"
    elif [[ "$mode" != default ]]; then
        log "unknown start mode '$mode' (default or durable)"
        exit 2
    fi
    java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid | tail -1)" \
        -c "$props" >/dev/null
    log "starting Apache Kafka $KAFKA_VERSION ($mode) on 127.0.0.1:$KAFKA_PORT, data in $KAFKA_DATA"
    nohup java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.yaml" \
        -cp "$LIB/*" kafka.Kafka "$props" >"$KAFKA_HOME/kafka.log" 2>&1 &
    echo $! >"$KAFKA_HOME/kafka.pid"
    for _ in $(seq 1 120); do
        if (echo >"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
            log "up (pid $(cat "$KAFKA_HOME/kafka.pid"))"
            return 0
        fi
        if ! kill -0 "$(cat "$KAFKA_HOME/kafka.pid")" 2>/dev/null; then
            log "Kafka exited during startup; its log:"
            tail -20 "$KAFKA_HOME/kafka.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    log "Kafka did not listen on $KAFKA_PORT within 60 s"
    exit 1
}

stop() {
    local pidfile="$KAFKA_HOME/kafka.pid"
    [[ -f "$pidfile" ]] || return 0
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

tool() {
    local name="$1"
    shift
    local class
    case "$name" in
        kafka-topics) class=org.apache.kafka.tools.TopicCommand ;;
        kafka-configs) class=kafka.admin.ConfigCommand ;;
        kafka-consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
        kafka-console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
        kafka-console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
        kafka-producer-perf-test) class=org.apache.kafka.tools.ProducerPerformance ;;
        kafka-consumer-perf-test) class=org.apache.kafka.tools.ConsumerPerformance ;;
        kafka-get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
        kafka-delete-records) class=org.apache.kafka.tools.DeleteRecordsCommand ;;
        kafka-log-dirs) class=org.apache.kafka.tools.LogDirsCommand ;;
        kafka-leader-election) class=org.apache.kafka.tools.LeaderElectionCommand ;;
        kafka-transactions) class=org.apache.kafka.tools.TransactionsCommand ;;
        kafka-cluster) class=org.apache.kafka.tools.ClusterTool ;;
        kafka-reassign-partitions) class=org.apache.kafka.tools.reassign.ReassignPartitionsCommand ;;
        kafka-features) class=org.apache.kafka.tools.FeatureCommand ;;
        *)
            log "unknown tool '$name'"
            exit 2
            ;;
    esac
    fetch
    java_run "$class" "$@"
}

case "${1:-}" in
    fetch) fetch ;;
    start) start "${2:-default}" ;;
    stop) stop ;;
    tool)
        shift
        tool "$@"
        ;;
    classpath)
        fetch
        echo "$LIB/*"
        ;;
    *)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
