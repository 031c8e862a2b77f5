#!/usr/bin/env python3
"""Makes the fuzz corpus seeds from real traffic: starts a broker, puts a recording TCP relay in
front of it, runs real clients (kafka-python, confluent-kafka/librdkafka, kcat) through the relay
against the topic the dispatcher target pre-creates ("fuzz"), then cuts what it recorded into
per-target seeds under fuzz/corpus/<target>/ (request frames, Produce/Fetch bodies, record
batches, the metadata log, __consumer_offsets batches, a group snapshot).

Usage: .venv/bin/python fuzz/seeds/capture.py SLUICE_BIN
Only 127.0.0.1; the broker's data directory is a temporary directory removed at the end.
"""
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"
TOPIC = "fuzz"
GROUP = "fuzz-group"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """Accepts clients on `port`, connects each to the broker, records client->broker bytes
    per connection, and rewrites nothing (clients are told the relay's address by passing it
    as the broker's advertised listener)."""

    def __init__(self, port, broker_port):
        self.port, self.broker_port = port, broker_port
        self.streams = []
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(64)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            record = bytearray()
            with self.lock:
                self.streams.append(record)
            threading.Thread(target=self.pump, args=(client, upstream, record), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def pump(src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def frames(stream):
    out, pos = [], 0
    while pos + 4 <= len(stream):
        (size,) = struct.unpack_from(">i", stream, pos)
        if size <= 0 or pos + 4 + size > len(stream):
            break
        out.append(bytes(stream[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    return out


def header_len(frame):
    """Bytes of the request header (v1 or v2) at the start of `frame`."""
    api_key, version = struct.unpack_from(">hh", frame, 0)
    (client_len,) = struct.unpack_from(">h", frame, 8)
    end = 10 + max(client_len, 0)
    flexible = {0: 9, 1: 12, 3: 9, 18: 3, 19: 5, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4,
                2: 6, 22: 2, 32: 4, 15: 5, 16: 3, 20: 4, 60: 0}.get(api_key, 99)
    if version >= flexible:
        end += 1  # empty tagged fields from every client used here
    return end


def save(target, name, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    (directory / f"seed-{name}-{digest}").write_bytes(data)


def run_clients(bootstrap):
    py = sys.executable
    script = f"""
import kafka, confluent_kafka, time
p = kafka.KafkaProducer(bootstrap_servers='{bootstrap}', acks='all', linger_ms=5)
for i in range(20):
    p.send('{TOPIC}', key=b'k%d' % i, value=b'value-%d' % i, partition=i % 3)
p.flush(); p.close()
p = confluent_kafka.Producer({{'bootstrap.servers': '{bootstrap}', 'enable.idempotence': True,
    'compression.type': 'lz4', 'linger.ms': 5}})
for i in range(20):
    p.produce('{TOPIC}', key=b'c%d' % i, value=b'confluent-%d' % i * 3, partition=i % 3)
p.flush()
c = confluent_kafka.Consumer({{'bootstrap.servers': '{bootstrap}', 'group.id': '{GROUP}',
    'auto.offset.reset': 'earliest', 'enable.auto.commit': False,
    'session.timeout.ms': 6000}})
c.subscribe(['{TOPIC}'])
got, deadline = 0, time.time() + 30
while got < 40 and time.time() < deadline:
    m = c.poll(0.5)
    if m is not None and m.error() is None:
        got += 1
        c.commit(message=m, asynchronous=False)
c.close()
k = kafka.KafkaConsumer('{TOPIC}', bootstrap_servers='{bootstrap}', group_id='kp-group',
    auto_offset_reset='earliest', consumer_timeout_ms=4000)
n = sum(1 for _ in k)
k.commit(); k.close()
a = kafka.KafkaAdminClient(bootstrap_servers='{bootstrap}')
a.create_topics([kafka.admin.NewTopic('fuzz-created', 2, 1)])
a.describe_configs([kafka.admin.ConfigResource(kafka.admin.ConfigResourceType.TOPIC, '{TOPIC}')])
a.list_groups(); a.describe_groups(['{GROUP}']); a.list_group_offsets('{GROUP}')
a.close()
print('consumed', got, n)
"""
    subprocess.run([py, "-c", script], check=True, timeout=120)
    subprocess.run(["kcat", "-b", bootstrap, "-t", TOPIC, "-C", "-e", "-o", "beginning", "-q"],
                   check=True, timeout=60, stdout=subprocess.DEVNULL)
    subprocess.run(["kcat", "-b", bootstrap, "-L"], check=True, timeout=60,
                   stdout=subprocess.DEVNULL)


def main():
    binary = sys.argv[1]
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-seeds-"))
    broker_port, relay_port = free_port(), free_port()
    proc = subprocess.Popen([binary, "serve", "--data-dir", str(data_dir), "--listen",
                             f"127.0.0.1:{broker_port}", "--shards", "1",
                             "--advertised-listener", f"127.0.0.1:{relay_port}",
                             "--admin-listen", "", "--override", "log.direct.io=false",
                             "--override", "group.initial.rebalance.delay.ms=0"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", broker_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        relay = Relay(relay_port, broker_port)
        subprocess.run([sys.executable, "-c",
                        f"import kafka; a = kafka.KafkaAdminClient(bootstrap_servers='127.0.0.1:{relay_port}');"
                        f"a.create_topics([kafka.admin.NewTopic('{TOPIC}', 3, 1)]); a.close()"],
                       check=True, timeout=60)
        run_clients(f"127.0.0.1:{relay_port}")
        time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    seen_api = {}
    for index, stream in enumerate(relay.streams):
        if stream:
            save("dispatch", f"conn{index}", bytes(stream))
        for frame in frames(stream):
            api_key, version = struct.unpack_from(">hh", frame, 0)
            key = (api_key, version)
            seen_api[key] = seen_api.get(key, 0) + 1
            if seen_api[key] > 2:
                continue
            save("request_header", f"api{api_key}v{version}", frame)
            body = frame[header_len(frame):]
            if api_key == 0:
                save("produce_request", f"v{version}", bytes([version]) + body)
            elif api_key == 1:
                save("fetch_request", f"v{version}", bytes([version - 4]) + body)
    for path in data_dir.glob(f"{TOPIC}-*/*.log"):
        data = path.read_bytes().rstrip(b"\0")
        if data:
            save("record_batch", path.parent.name, b"\x00" + data[:65536])
    meta = (data_dir / "__cluster_metadata.log").read_bytes()
    save("metadata_log", "file", b"\x00" + meta)
    save("metadata_log", "json", b"\x01" + b"\n".join(
        line.split(b" ", 1)[1] for line in meta.splitlines() if b" " in line) + b"\n")
    for path in data_dir.glob("__consumer_offsets-*/*.log"):
        data = path.read_bytes().rstrip(b"\0")
        if data:
            save("group_records", path.parent.name, b"\x00" + data[:65536])
    for path in (data_dir / "group_snapshots").glob("*.snapshot"):
        save("group_snapshot", path.stem, b"\x00" + path.read_bytes())
    shutil.rmtree(data_dir, ignore_errors=True)
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(target, len(list((CORPUS / target).iterdir())))


if __name__ == "__main__":
    main()
