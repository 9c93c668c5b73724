"""A self-signed certificate for a loopback TLS stand-in (SMTP, a Kubernetes API ...).

cert, key = self_signed(tmp_path, "smtp.test")
ctx = server_tls_context(cert, key)     # for the server; clients trust ``cert``
ca = make_ca(tmp_path); cert, key = issue(tmp_path, ca, "server", "vault.test", ips=["127.0.0.1"])
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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
    return _write(directory, stem, cert, key)


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """``<stem>.crt`` and ``<stem>.key`` (unencrypted PKCS8, mode 0600)."""
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context presenting ``cert``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def make_ca(
    directory: Path, common_name: str = "Maily Test CA", *, stem: str = "ca"
) -> tuple[Path, Path]:
    """A CA certificate and key (``<stem>.crt``, ``<stem>.key``) that :func:`issue` signs with."""
    return self_signed(directory, common_name, stem=stem)


def issue(
    directory: Path,
    ca: tuple[Path, Path],
    stem: str,
    common_name: str,
    *,
    dns_names: Iterable[str] = (),
    ips: Iterable[str] = (),
    client: bool = False,
    valid_for: dt.timedelta = dt.timedelta(hours=1),
) -> tuple[Path, Path]:
    """A leaf certificate signed by ``ca`` for ``dns_names``/``ips`` (server auth), or a client
    certificate (``client=True``: client auth). Writes ``<stem>.crt`` and ``<stem>.key``."""
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write(directory, stem, cert, key)
