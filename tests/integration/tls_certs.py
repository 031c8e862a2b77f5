"""Test certificates made at test time with the openssl CLI (nothing is committed): a CA, a
server certificate for 127.0.0.1/localhost, client certificates signed by the CA, one signed by
an unrelated CA, and an expired one. EC P-256 keys (fast to make), unencrypted PKCS#8 PEM.

What this module owns: the files under the directory it is given. It never touches anything
else and never reuses keys between test runs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args, cwd: Path):
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"openssl {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


@dataclass
class Identity:
    cert: Path  # the certificate (PEM)
    key: Path  # its unencrypted PKCS#8 key (PEM)
    bundle: Path  # key + certificate in one PEM file (Kafka's ssl.keystore.location)
    subject: str  # as openssl -subj wrote it

    def serial(self) -> str:
        out = _openssl("x509", "-in", str(self.cert), "-noout", "-serial", cwd=self.cert.parent)
        return out.strip().split("=", 1)[1].upper()


class CertAuthority:
    def __init__(self, directory: Path, name: str = "ca"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = self.dir / f"{name}.key"
        self.cert = self.dir / f"{name}.pem"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                 "-subj", f"/O=Sluice Tests/CN={name}", cwd=self.dir)

    def issue(self, name: str, subject: str, *, server: bool = False,
              expired: bool = False, ips=("127.0.0.1",), client_too: bool = False) -> Identity:
        """A certificate for `subject`; a server one names `ips` and localhost (and, with
        client_too, may also authenticate as a client, as a broker's does to other brokers)."""
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject, cwd=self.dir)
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
        if server:
            usage = "serverAuth,clientAuth" if client_too else "serverAuth"
            names = ",".join([f"IP:{ip}" for ip in ips] + ["DNS:localhost"])
            lines += [f"extendedKeyUsage={usage}", f"subjectAltName={names}"]
        else:
            lines += ["extendedKeyUsage=clientAuth"]
        ext.write_text("\n".join(lines) + "\n")
        if expired:
            self._issue_expired(csr, cert, ext)
        else:
            _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey",
                     str(self.key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                     "-extfile", str(ext), cwd=self.dir)
        bundle = self.dir / f"{name}-bundle.pem"
        bundle.write_text(key.read_text() + cert.read_text())
        return Identity(cert=cert, key=key, bundle=bundle, subject=subject)

    def _issue_expired(self, csr: Path, cert: Path, ext: Path):
        """`openssl ca` is the CLI that takes explicit validity dates (OpenSSL 3.0)."""
        db = self.dir / "ca-db"
        (db / "new").mkdir(parents=True, exist_ok=True)
        (db / "index.txt").touch()
        serial = db / "serial"
        if not serial.exists():
            serial.write_text("1000\n")
        conf = db / "ca.cnf"
        conf.write_text(f"""[ca]
default_ca = ca_default
[ca_default]
database = {db}/index.txt
new_certs_dir = {db}/new
serial = {serial}
default_md = sha256
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
""")
        _openssl("ca", "-batch", "-config", str(conf), "-cert", str(self.cert), "-keyfile",
                 str(self.key), "-in", str(csr), "-out", str(cert), "-notext",
                 "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
                 "-extfile", str(ext), cwd=self.dir)
