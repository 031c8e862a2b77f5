"""The worked examples in examples/ run end to end against the real broker, each with the one
command its README gives: toll-plaza (confluent-kafka producer, group consumer into SQLite that
is SIGKILLed and restarted, per-plaza query) and rider-updates (kafkajs admin, region-routed
producer, two group consumers). Both need consumer groups, hence the `groups` mark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, unique_topic

EXAMPLES = Path(REPO_ROOT) / "examples"
NODE_MODULES = Path(REPO_ROOT) / "tests" / "js" / "node_modules"


@pytest.mark.groups
@pytest.mark.slow
def test_toll_plaza_pipeline_survives_a_consumer_crash(broker, tmp_path):
    db = tmp_path / "toll.db"
    topic, group = unique_topic("toll"), unique_topic("toll-db")
    proc = subprocess.run(
        [sys.executable, "demo.py", "--bootstrap", broker.bootstrap, "--events", "3000",
         "--db", f"sqlite:///{db}", "--topic", topic, "--group", group],
        cwd=EXAMPLES / "toll-plaza", capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "consumer killed with SIGKILL" in proc.stdout
    assert "demo: OK: all 3000 events stored exactly once" in proc.stdout

    query = subprocess.run([sys.executable, "query.py", "--db", f"sqlite:///{db}", "--json"],
                           cwd=EXAMPLES / "toll-plaza", capture_output=True, text=True, timeout=30)
    result = json.loads(query.stdout.strip().splitlines()[-1])
    assert result["total"] == 3000 and result["distinct_events"] == 3000
    assert sorted(result["plazas"]) == ["1", "2", "3", "4", "5"]
    assert sum(result["plazas"].values()) == 3000


@pytest.mark.groups
def test_rider_updates_routes_by_region_and_splits_the_group(broker):
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES), UPDATES="30")
    proc = subprocess.run(["node", "run.js", broker.bootstrap], cwd=EXAMPLES / "rider-updates",
                          capture_output=True, text=True, timeout=100, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    summary = json.loads(lines[-1])
    assert proc.returncode == 0, f"{summary}\nstderr:\n{proc.stderr[-3000:]}"
    assert summary["ok"] is True
    assert summary["partitions"] == 2
    assert summary["sent"] == summary["received"] == summary["distinct"] == 30
    assert summary["misrouted"] == 0
    # i % 3 == 0 is south (partition 1): 10 south, 20 north.
    assert summary["by_partition"] == {"0": 20, "1": 10}
    # Two members in one group, one partition each.
    assert sorted(p for ps in summary["assignments"].values() for p in ps) == [0, 1]
    assert all(count > 0 for count in summary["by_consumer"].values()), summary
    printed = [line for line in lines if line.startswith("dashboard-")]
    assert len(printed) == 30
