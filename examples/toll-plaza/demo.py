"""One command for the whole toll-plaza pipeline against a running broker:

    python3 demo.py --bootstrap 127.0.0.1:9092

Produces EVENTS events, starts the consumer, kills it with SIGKILL part-way (no clean shutdown,
no final commit), starts it again, and prints the per-plaza counts. Exits non-zero if any event
is missing or stored twice."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args, **kw):
    return subprocess.run([sys.executable, *map(str, args)], cwd=HERE, check=True, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--db", default=None, help="database URL (default: a fresh sqlite file here)")
    ap.add_argument("--topic", default="toll")
    ap.add_argument("--group", default="toll-db")
    args = ap.parse_args()
    db = args.db
    if db is None:
        path = HERE / "toll.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        db = f"sqlite:///{path}"

    run("producer.py", "--bootstrap", args.bootstrap, "--topic", args.topic, "--events", args.events)

    common = ["--bootstrap", args.bootstrap, "--topic", args.topic, "--group", args.group, "--db", db]
    first = subprocess.Popen([sys.executable, "consumer.py", *common, "--idle-exit-s", "30"],
                             cwd=HERE, stdout=subprocess.PIPE, text=True)
    # Let it store some events, then kill it without warning.
    for line in first.stdout:
        print(line, end="")
        if "new rows so far" in line and int(line.split("(")[1].split()[0]) >= args.events // 3:
            break
    try:
        os.kill(first.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it already finished; the restart below then has nothing left to do
    first.wait()
    print("demo: consumer killed with SIGKILL; restarting it")

    run("consumer.py", *common, "--idle-exit-s", "5")
    out = run("query.py", "--db", db, "--json", capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    run("query.py", "--db", db)
    if result["total"] != args.events or result["distinct_events"] != args.events:
        print(f"demo: FAILED: expected {args.events} events once each, got {result}", file=sys.stderr)
        sys.exit(1)
    print(f"demo: OK: all {args.events} events stored exactly once across a consumer crash")


if __name__ == "__main__":
    main()
