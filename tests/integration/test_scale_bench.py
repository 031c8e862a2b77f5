"""scripts/scale-bench.sh (issue 17's scaling table) runs end to end on a short schedule: it
starts its own broker, runs the named rows, and writes a section whose rows carry the figures
the runs produced (MB/s, records/s, broker CPU per GB) and their ratio to the base row. The
full table is a benchmark (BENCHMARKS.md), not a test; this keeps the script from rotting."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scale_bench_writes_a_row_per_workload_with_real_figures(sluice_bin, tmp_path):
    out = tmp_path / "out.md"
    env = dict(os.environ, SLUICE_BIN=str(sluice_bin), BENCH_DIR=str(tmp_path / "scale"),
               OUT_MD=str(out), SCENARIOS="base c1 r100", DURATION_S="1",
               BENCH_PORT=str(_free_port()), BENCH_ADMIN_PORT=str(_free_port()),
               PEER_PORT=str(_free_port()), SLUICE_OVERRIDES="log.tail.cache.bytes=67108864",
               FILL_BYTES=str(16 << 20))
    env.pop("PEER", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts/scale-bench.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The fresh broker's warm-up ran first: 16 MiB of 1 KiB records, before any row.
    warm_up = json.loads((tmp_path / "scale" / "sluice-fill.json").read_text())
    assert warm_up["records"] == 16384, warm_up
    text = out.read_text()
    assert "<!-- scale-bench:begin -->" in text and "<!-- scale-bench:end -->" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and re.match(r"^[\d,.]+$", cells[1]):
            rows[cells[0]] = cells
    assert set(rows) == {"base: 16 partitions, 4 connections, 1 KiB", "1 producer connection",
                         "100 B records"}, text
    for label, cells in rows.items():
        assert float(cells[1].replace(",", "")) > 0, (label, cells)
        assert float(cells[2].replace(",", "")) > 0, (label, cells)
        assert float(cells[4]) > 0, f"no broker CPU measured: {cells}"
    assert rows["base: 16 partitions, 4 connections, 1 KiB"][6] == "1.00"
    # The row ran with 100-byte records: about ten times as many records per MB as the base.
    # (Its CPU per GB is usually higher too, but two 1-second runs on a shared 2-core machine
    # do not order that reliably; records per MB follows from the flags alone.)
    def records_per_mb(cells):
        return float(cells[2].replace(",", "")) / float(cells[1].replace(",", ""))
    small = records_per_mb(rows["100 B records"])
    base = records_per_mb(rows["base: 16 partitions, 4 connections, 1 KiB"])
    assert small > 5 * base, (small, base, rows["100 B records"])
    assert float(rows["100 B records"][7]) > 0, rows["100 B records"]
