"""A self-signed certificate for a loopback TLS stand-in (SMTP, a Kubernetes API ...).

cert, key = self_signed(tmp_path, "smtp.test")
ctx = server_tls_context(cert, key)     # for the server; clients trust ``cert``
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


def self_signed(
    directory: Path,
    common_name: str = "smtp.test",
    *,
    dns_names: Iterable[str] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
    valid_for: dt.timedelta = dt.timedelta(hours=1),
    stem: str = "smtp",
) -> tuple[Path, Path]:
    """Write ``<stem>.crt`` and ``<stem>.key`` (PEM) into ``directory``; return their paths.

    The certificate is its own CA, valid for 127.0.0.1 and ``dns_names``, from five minutes
    ago for ``valid_for``. ``key`` defaults to a new P-256 key.
    """
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context presenting ``cert``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx
