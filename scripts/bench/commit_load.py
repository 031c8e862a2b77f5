#!/usr/bin/env python3
"""Offset-commit load for scripts/bench.sh: sends OffsetCommit requests at a fixed rate (open
loop) to a group's coordinator and reports how many were answered, with which error codes and
how long they took.

It speaks the Kafka protocol directly over one socket (FindCoordinator v0, OffsetCommit v2 as a
simple consumer: generation -1, no member id), so it needs nothing but Python and costs the
machine as little CPU as possible: on a 2-core box the load generator's own CPU is stolen from
the broker and the producer whose throughput is being compared. It must never retry silently:
every request is counted as sent, answered without error, answered with an error, or lost.

Usage: commit_load.py --bootstrap HOST:PORT --topic T --partitions N --rate 1000 --duration-s 20
Prints one JSON document on stdout.
"""

import argparse
import json
import socket
import struct
import sys
import threading
import time

API_OFFSET_COMMIT = 8
API_FIND_COORDINATOR = 10
CLIENT_ID = b"sluice-bench-commits"


def kafka_string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def frame(api_key, api_version, correlation_id, body):
    header = struct.pack(">hhi", api_key, api_version, correlation_id)
    header += struct.pack(">h", len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def read_exact(sock, count):
    chunks = []
    while count:
        chunk = sock.recv(count)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_response(sock):
    (size,) = struct.unpack(">i", read_exact(sock, 4))
    return read_exact(sock, size)


def find_coordinator(host, port, group):
    """The coordinator's (host, port) for `group` (FindCoordinator v0)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(frame(API_FIND_COORDINATOR, 0, 1, kafka_string(group)))
        body = read_response(sock)
    correlation_id, error_code, _node_id, host_len = struct.unpack(">ihih", body[:12])
    if correlation_id != 1 or error_code != 0:
        raise RuntimeError(f"FindCoordinator failed: error code {error_code}")
    coordinator_host = body[12:12 + host_len].decode()
    (coordinator_port,) = struct.unpack(">i", body[12 + host_len:16 + host_len])
    return coordinator_host, coordinator_port


def offset_commit_body(group, topic, partition, offset):
    body = kafka_string(group)
    body += struct.pack(">i", -1)  # generation: a simple consumer, no membership
    body += kafka_string("")  # member id
    body += struct.pack(">q", -1)  # retention: the broker's default
    body += struct.pack(">i", 1) + kafka_string(topic)
    body += struct.pack(">i", 1) + struct.pack(">iq", partition, offset)
    body += struct.pack(">h", -1)  # metadata: null
    return body


def error_codes(body):
    """Error codes of an OffsetCommit v2 response body (after the correlation id)."""
    codes = []
    position = 0
    (topics,) = struct.unpack_from(">i", body, position)
    position += 4
    for _ in range(topics):
        (name_len,) = struct.unpack_from(">h", body, position)
        position += 2 + name_len
        (partitions,) = struct.unpack_from(">i", body, position)
        position += 4
        for _ in range(partitions):
            _partition, code = struct.unpack_from(">ih", body, position)
            position += 6
            codes.append(code)
    return codes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--group", default="sluice-bench-commits")
    parser.add_argument("--rate", type=float, default=1000.0, help="commits per second")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--in-flight-max", type=int, default=1000)
    args = parser.parse_args()

    host, port = args.bootstrap.rsplit(":", 1)
    coordinator = find_coordinator(host, int(port), args.group)
    sock = socket.create_connection(coordinator, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    sent_at = {}
    lock = threading.Lock()
    window = threading.Semaphore(args.in_flight_max)
    outcome = {"ok": 0, "errors": {}, "latencies_ms": [], "reader_error": None}
    sent_total = [0]

    def reader():
        try:
            while True:
                body = read_response(sock)
                (correlation_id,) = struct.unpack_from(">i", body, 0)
                now = time.monotonic()
                with lock:
                    origin = sent_at.pop(correlation_id)
                window.release()
                outcome["latencies_ms"].append((now - origin) * 1000.0)
                codes = error_codes(body[4:])
                bad = [code for code in codes if code != 0]
                if bad:
                    for code in bad:
                        outcome["errors"][str(code)] = outcome["errors"].get(str(code), 0) + 1
                else:
                    outcome["ok"] += 1
        except Exception as error:  # reported, never swallowed
            outcome["reader_error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    start = time.monotonic()
    interval_s = 1.0 / args.rate
    total = int(args.rate * args.duration_s)
    offsets = [0] * args.partitions
    late_max_ms = 0.0
    for index in range(total):
        due = start + index * interval_s
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            late_max_ms = max(late_max_ms, (now - due) * 1000.0)
        if outcome["reader_error"]:
            break
        partition = index % args.partitions
        offsets[partition] += 1
        correlation_id = index + 2
        request = frame(API_OFFSET_COMMIT, 2, correlation_id,
                        offset_commit_body(args.group, args.topic, partition, offsets[partition]))
        window.acquire()
        with lock:
            # The intended send time, so a slow broker shows in the latency (open loop).
            sent_at[correlation_id] = due
        sock.sendall(request)
        sent_total[0] += 1
    elapsed_s = time.monotonic() - start
    # Wait for the answers still in flight (the reader is a daemon blocked in recv).
    deadline = time.monotonic() + 30
    while sent_at and not outcome["reader_error"] and time.monotonic() < deadline:
        time.sleep(0.01)
    lost = len(sent_at)
    latencies = sorted(outcome["latencies_ms"])

    def percentile(fraction):
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(fraction * len(latencies)))], 3)

    report = {
        "sent": sent_total[0],
        "ok": outcome["ok"],
        "errors": outcome["errors"],
        "unanswered": lost,
        "reader_error": outcome["reader_error"],
        "elapsed_s": round(elapsed_s, 3),
        "commits_per_s": round(outcome["ok"] / elapsed_s, 1) if elapsed_s else 0.0,
        "target_per_s": args.rate,
        "sender_late_max_ms": round(late_max_ms, 3),
        "latency_ms": {"p50": percentile(0.5), "p99": percentile(0.99),
                       "max": round(latencies[-1], 3) if latencies else None},
    }
    json.dump(report, sys.stdout)
    print()
    sock.close()
    return 0 if outcome["ok"] == sent_total[0] and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
