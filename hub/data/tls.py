"""The federation's own certificate authority and the loopback server certificate.

The token protocol (ztn) refuses to send a bearer token over a connection that is not TLS
("security protocol 'ztn' disallowed for non-TLS connections"), so every daemon that takes a
user's token speaks TLS. A CA made once per platform signs one certificate for 127.0.0.1 and
localhost; clients trust it through X509_CERT_DIR, the folder XRootD's client reads CAs from
(by OpenSSL subject-hash names, as /etc/grid-security/certificates has them).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
CA_DIR = "certificates"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Officina"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_tls(folder: Path, owner_uid: int, owner_gid: int) -> Path:
    """CA, server certificate and the hashed CA folder under `folder`; made once, reused
    after (a restart keeps the CA sessions already trust). Returns the CA folder."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    ca_path, ca_key_path = folder / CA_FILE, folder / CA_KEY_FILE
    now = datetime.datetime.now(datetime.timezone.utc)
    if not ca_path.exists() or not ca_key_path.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("Officina data federation CA"))
            .issuer_name(_name("Officina data federation CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, _key_pem(ca_key), 0o600)
        _write(ca_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        for stale in (folder / CERT_FILE, folder / KEY_FILE):
            stale.unlink(missing_ok=True)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            # XRootD clients that locate a file first (xrootdfs) connect to the address the
            # server answers with, an IPv4-mapped IPv6 one, and check that literal name.
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::ffff:127.0.0.1")), x509.DNSName("[::ffff:127.0.0.1]")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    # The daemons run as their own account and must read their key; nobody else may.
    os.chown(key_path, owner_uid, owner_gid)
    ca_dir = folder / CA_DIR
    ca_dir.mkdir(exist_ok=True)
    os.chmod(ca_dir, 0o755)
    subject_hash = subprocess.run(["openssl", "x509", "-noout", "-subject_hash", "-in", str(ca_path)],
                                  capture_output=True, text=True, check=True).stdout.strip()
    hashed = ca_dir / f"{subject_hash}.0"
    if not hashed.exists():
        _write(hashed, ca_path.read_bytes(), 0o644)
    return ca_dir
