#!/usr/bin/env python3
"""SCRAM handshake rate: how many SASL_PLAINTEXT connections per second a broker authenticates
with SCRAM-SHA-256 or SCRAM-SHA-512 (or PLAIN, one round trip) (connect, SaslHandshake v1, two SaslAuthenticate v1
round trips, server signature checked, close), from THREADS client loops for DURATION seconds.

The client derives the salted password once per (salt, iterations) and reuses it, so the loop
measures the broker's side (nonce, proof check, server signature) and the connection setup,
not the client's PBKDF2. With --broker-pid, the broker's CPU seconds per 1000 handshakes are
reported too. A benchmark, not a test: it asserts nothing beyond each handshake succeeding.

Usage: scripts/sasl-bench.py HOST:PORT USER PASSWORD [--mechanism SCRAM-SHA-512|SCRAM-SHA-256|PLAIN]
       [--threads 2] [--duration 10] [--broker-pid PID]
"""

import argparse
import base64
import hashlib
import hmac
import os
import socket
import struct
import threading
import time


def frame(api_key, version, correlation_id, body):
    client_id = b"sasl-bench"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by broker")
        buf += chunk
    return buf


def call(sock, api_key, version, cid, body):
    sock.sendall(frame(api_key, version, cid, body))
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    data = recv_exact(sock, size)
    return data[4:]  # past the correlation id


def authenticate(sock, cid, token):
    body = call(sock, 36, 1, cid, struct.pack(">i", len(token)) + token)
    (error,) = struct.unpack(">h", body[:2])
    (mlen,) = struct.unpack(">h", body[2:4])
    at = 4 + max(mlen, 0)
    (alen,) = struct.unpack(">i", body[at:at + 4])
    auth = body[at + 4:at + 4 + alen]
    if error:
        raise RuntimeError(f"SaslAuthenticate error {error}")
    return auth


class Plain:
    """SASL/PLAIN: one SaslAuthenticate with the password (the broker derives it with the
    stored SCRAM salt and iterations and compares, so it pays a PBKDF2 per login)."""

    def __init__(self, user, password):
        self.token = b"\0" + user.encode() + b"\0" + password.encode()

    def handshake(self, addr):
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            body = call(sock, 17, 1, 1, struct.pack(">h", 5) + b"PLAIN")
            if struct.unpack(">h", body[:2])[0]:
                raise RuntimeError("SaslHandshake refused")
            authenticate(sock, 2, self.token)


class Scram:
    def __init__(self, mechanism, user, password):
        self.hash = hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha512
        self.name = "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"
        self.mechanism = mechanism
        self.user = user
        self.password = password.encode()
        self.salted = {}

    def handshake(self, addr):
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mech = self.mechanism.encode()
            body = call(sock, 17, 1, 1, struct.pack(">h", len(mech)) + mech)
            if struct.unpack(">h", body[:2])[0]:
                raise RuntimeError("SaslHandshake refused")
            nonce = base64.b64encode(os.urandom(18)).decode()
            bare = f"n={self.user},r={nonce}"
            server_first = authenticate(sock, 2, ("n,," + bare).encode()).decode()
            fields = dict(f.split("=", 1) for f in server_first.split(","))
            key = (fields["s"], int(fields["i"]))
            if key not in self.salted:
                self.salted[key] = hashlib.pbkdf2_hmac(
                    self.name, self.password, base64.b64decode(fields["s"]), int(fields["i"]))
            salted = self.salted[key]
            client_key = hmac.new(salted, b"Client Key", self.hash).digest()
            stored_key = self.hash(client_key).digest()
            without_proof = f"c=biws,r={fields['r']}"
            auth_message = f"{bare},{server_first},{without_proof}".encode()
            signature = hmac.new(stored_key, auth_message, self.hash).digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
            server_final = authenticate(sock, 3, final).decode()
            server_key = hmac.new(salted, b"Server Key", self.hash).digest()
            expected = hmac.new(server_key, auth_message, self.hash).digest()
            if server_final != "v=" + base64.b64encode(expected).decode():
                raise RuntimeError("server signature does not match")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("user")
    parser.add_argument("password")
    parser.add_argument("--mechanism", default="SCRAM-SHA-512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--broker-pid", type=int)
    args = parser.parse_args()

    counts = [0] * args.threads
    deadline = time.monotonic() + args.duration

    def loop(i):
        scram = (Plain(args.user, args.password) if args.mechanism == "PLAIN"
                 else Scram(args.mechanism, args.user, args.password))
        while time.monotonic() < deadline:
            scram.handshake(args.bootstrap)
            counts[i] += 1

    cpu_before = cpu_seconds(args.broker_pid) if args.broker_pid else None
    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed_s = time.monotonic() - started
    total = sum(counts)
    line = (f"{args.mechanism}: {total} handshakes in {elapsed_s:.1f} s = "
            f"{total / elapsed_s:.0f} connections/s ({args.threads} client threads)")
    if cpu_before is not None:
        used = cpu_seconds(args.broker_pid) - cpu_before
        line += f"; broker CPU {used:.2f} s = {1000 * used / max(total, 1):.2f} CPU-ms per handshake"
    print(line)


if __name__ == "__main__":
    main()
