"""The README's tour, run line by line against a real broker, so the README cannot go stale.

The block between `<!-- tour:begin -->` and `<!-- tour:end -->` is extracted verbatim; the
only substitution is the broker address (the README uses the default 127.0.0.1:9092)."""

import os
import pathlib
import re
import subprocess

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def tour_lines():
    text = README.read_text()
    block = re.search(r"<!-- tour:begin -->\s*```sh\n(.*?)```\s*<!-- tour:end -->", text, re.S)
    assert block, "README.md has no tour block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_tour_runs_and_shows_what_it_promises(broker, sluice_bin):
    env = dict(os.environ)
    env["PATH"] = f"{pathlib.Path(sluice_bin).parent}:{env['PATH']}"
    env["SLUICE_BOOTSTRAP"] = broker.bootstrap
    outputs = []
    for line in tour_lines():
        command = line.replace("127.0.0.1:9092", broker.bootstrap)
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, (
            f"README tour line failed: {line}\nstdout:\n{proc.stdout.decode(errors='replace')}"
            f"\nstderr:\n{proc.stderr.decode(errors='replace')}")
        outputs.append(proc.stdout.decode(errors="replace"))
    by_line = dict(zip(tour_lines(), outputs))
    first_consume = next(o for line, o in by_line.items() if "--max-records 2 --format '%k=%v" in line)
    assert sorted(first_consume.split()) == ["k1=hello", "k2=world"]
    kcat_out = next(o for line, o in by_line.items() if line.startswith("kcat") and "-C" in line)
    assert sorted(kcat_out.split()) == ["k1=hello", "k2=world"]
    describe = next(o for line, o in by_line.items() if "topics describe" in line)
    assert "PartitionCount: 3" in describe
    grouped = next(o for line, o in by_line.items() if "--group tour" in line)
    assert sorted(grouped.split()) == ["from-kcat", "hello", "world"]
    bench = next(o for line, o in by_line.items() if "bench produce" in line)
    assert "p99" in bench and "records/s" in bench.replace("rec/s", "records/s")
