#!/usr/bin/env python3
"""TLS handshake fuzzing against a real broker (the long run of test_tls.py's short one).

Starts `sluice serve` with a PLAINTEXT and an SSL listener (certificates made now with openssl,
in a temporary directory removed at the end), then for --seconds sends, each on a new
connection: random bytes, truncated ClientHellos, valid ClientHellos followed by random bytes,
and ClientHellos with flipped bytes. Every connection must be closed by the broker (at once, or
after ssl.handshake.timeout.ms for a truncated hello); every 50 cases a real mutual-TLS client
and a plaintext ApiVersions must still be answered. Exits non-zero on a hang, a crash or a
panic in the broker log. Only 127.0.0.1 is contacted.

Usage: scripts/tls-fuzz.py [--seconds 120] [--seed N] [--bin target/release/sluice]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from tls_certs import CertAuthority  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_hello(ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def closed_by_broker(port: int, data: bytes, timeout_s: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(data)
        except OSError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not s.recv(65536):
                    return True
            except socket.timeout:
                return False
            except OSError:
                return True
    return False


def tls_client_ok(port: int, ca: Path, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            # ApiVersions v0, correlation id 1, client id "fuzz".
            body = b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x04fuzz"
            tls.sendall(len(body).to_bytes(4, "big") + body)
            return len(tls.recv(4)) == 4


def plaintext_ok(port: int) -> bool:
    body = b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x04fuzz"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(len(body).to_bytes(4, "big") + body)
        return len(s.recv(4)) == 4


def cases(rng: random.Random, hello: bytes):
    while True:
        kind = rng.randrange(4)
        if kind == 0:
            yield "random", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
        elif kind == 1:
            yield "truncated", hello[: rng.randrange(1, len(hello))]
        elif kind == 2:
            tail = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
            yield "hello+random", hello + tail
        else:
            mutated = bytearray(hello)
            for _ in range(rng.randrange(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            yield "flipped", bytes(mutated)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--bin", default=os.environ.get(
        "SLUICE_BIN", str(ROOT / "target" / "release" / "sluice")))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sluice-tls-fuzz-"))
    broker = None
    try:
        ca = CertAuthority(work / "ca")
        server = ca.issue("server", "/CN=broker", server=True)
        alice = ca.issue("alice", "/CN=alice")
        plain, tls_port = free_port(), free_port()
        log = open(work / "broker.log", "wb")
        broker = subprocess.Popen([
            args.bin, "serve", "--data-dir", str(work / "data"), "--shards", "2",
            "--admin-listen", "",
            "--override", f"listeners=PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{tls_port}",
            "--override", f"ssl.keystore.location={server.bundle}",
            "--override", f"ssl.truststore.location={ca.cert}",
            "--override", "ssl.client.auth=required",
            "--override", "ssl.handshake.timeout.ms=500",
        ], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if plaintext_ok(plain):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or broker.poll() is not None:
                print("broker did not start", file=sys.stderr)
                return 2
            time.sleep(0.1)
        hello = client_hello(ca.cert)
        rng = random.Random(args.seed)
        print(f"seed {args.seed}, {args.seconds:.0f} s", flush=True)
        counts: dict = {}
        end = time.monotonic() + args.seconds
        for n, (kind, data) in enumerate(cases(rng, hello)):
            if time.monotonic() > end:
                break
            if not closed_by_broker(tls_port, data, timeout_s=5):
                print(f"case {n} ({kind}) left open: {data[:64].hex()}", file=sys.stderr)
                return 1
            counts[kind] = counts.get(kind, 0) + 1
            if n % 50 == 0:
                if broker.poll() is not None:
                    print(f"broker exited with {broker.returncode}", file=sys.stderr)
                    return 1
                if not (tls_client_ok(tls_port, ca.cert, alice.cert, alice.key)
                        and plaintext_ok(plain)):
                    print("broker stopped serving", file=sys.stderr)
                    return 1
        text = (work / "broker.log").read_text(errors="replace")
        if "panicked" in text:
            print(text[-4000:], file=sys.stderr)
            return 1
        print(f"ok: {sum(counts.values())} connections {counts}; broker still serving")
        return 0
    finally:
        if broker is not None and broker.poll() is None:
            broker.terminate()
            try:
                broker.wait(20)
            except subprocess.TimeoutExpired:
                broker.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
