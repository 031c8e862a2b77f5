"""librdkafka's feature detection against sluice's ApiVersions, read from its own debug output
(kcat -d feature,protocol and confluent-kafka debug=feature,protocol). librdkafka logs
"Enabling feature X" / "Disabling feature X" per feature after ApiVersions; a feature it
disables silently changes client behaviour (e.g. compression downgraded to none), so the
features the broker core supports must be enabled. Group features are checked separately, in a
test marked `groups` (issue 6)."""

import logging
import re

import pytest

from helpers import create_topic, run_kcat, unique_topic

FEATURE_LINE = re.compile(r"(Enabling|Disabling) feature (\w+)")

# Produce v3 + Fetch v4 (MsgVer2), ApiVersions v0 (ApiVersion), ListOffsets v1 (OffsetTime),
# Produce v7 + Fetch v10 (ZSTD).
CORE_FEATURES = {"ApiVersion", "MsgVer2", "OffsetTime", "ZSTD"}
# FindCoordinator v0 (BrokerGroupCoordinator, and LZ4 compression!), plus OffsetCommit 1-2,
# OffsetFetch 1, JoinGroup/SyncGroup/Heartbeat/LeaveGroup v0 (BrokerBalancedConsumer).
GROUP_FEATURES = {"BrokerGroupCoordinator", "BrokerBalancedConsumer", "LZ4"}


def _features(text: str):
    enabled, disabled = set(), set()
    for verb, name in FEATURE_LINE.findall(text):
        (enabled if verb == "Enabling" else disabled).add(name)
    return enabled, disabled


def _kcat_debug(broker):
    create_topic(broker.bootstrap, unique_topic("feat"), 1)
    proc = run_kcat(["-b", broker.bootstrap, "-L", "-d", "feature,protocol,broker"])
    return proc.stderr.decode(errors="replace")


def _confluent_debug(broker):
    from confluent_kafka import Producer

    lines = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(f"rdkafka-{broker.port}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Capture())
    p = Producer({"bootstrap.servers": broker.bootstrap, "debug": "feature,protocol,broker",
                  "logger": logger})
    p.list_topics(timeout=10)
    for _ in range(5):
        p.poll(0.1)
    p.flush(5)
    return "\n".join(lines)


@pytest.mark.parametrize("client", ["kcat", "confluent-kafka"])
def test_librdkafka_enables_core_features(broker, client):
    text = _kcat_debug(broker) if client == "kcat" else _confluent_debug(broker)
    assert "ApiVersionRequest failed" not in text, "librdkafka fell back after ApiVersions failed"
    enabled, disabled = _features(text)
    assert enabled or disabled, f"no feature lines in {client}'s debug output:\n{text[-3000:]}"
    missing = CORE_FEATURES - enabled
    assert not missing, f"{client} disabled {sorted(missing)}; enabled {sorted(enabled)}"


@pytest.mark.groups
def test_librdkafka_enables_group_features(broker):
    enabled, _disabled = _features(_kcat_debug(broker))
    missing = GROUP_FEATURES - enabled
    assert not missing, f"librdkafka disabled {sorted(missing)}; enabled {sorted(enabled)}"
