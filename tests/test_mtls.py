"""Mutual TLS, VAULT_CAPATH, VAULT_TLS_SERVER_NAME and the cert auth method, against a real
OpenBao whose listeners require and verify client certificates.

The server (``bao server -dev`` plus a config with two TLS listeners) is this module's own:
- ``ip``: a certificate for 127.0.0.1, ``tls_require_and_verify_client_cert = true``;
- ``named``: a certificate for ``vault.internal`` only (no IP), client certificates required.
A CA of the test's own signs the server and client certificates; a second CA ("other") signs
a client certificate the listeners do not trust. The dev listener (plain HTTP) is only used to
set the server up with the root token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from maily_secrets.dev.server import bao_binary, free_port, health
from maily_secrets.errors import AuthFailed, ConfigurationError, VaultUnavailable
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.certs import issue, make_ca
from .kit.servers import running

SECRET_PATH = "secret/data/mtls"
CANARY = "mtls-canary-" + secrets.token_hex(8)


@dataclass(frozen=True)
class MtlsBao:
    ip_addr: str  # https://127.0.0.1:<port>, certificate for 127.0.0.1
    tls12_addr: str  # the same, at most TLS 1.2 (the refusal comes in the handshake)
    named_addr: str  # https://127.0.0.1:<port>, certificate for vault.internal only
    http_addr: str  # the dev listener, for setup
    token: str
    ca: Path
    client: tuple[Path, Path]
    other_client: tuple[Path, Path]  # signed by a CA the listeners do not trust
    other_ca: Path
    dir: Path

    def settings(self, **kw: object) -> VaultSettings:
        base: dict[str, object] = {
            "addr": self.ip_addr,
            "cacert": self.ca,
            "client_cert": self.client[0],
            "client_key": self.client[1],
            "max_retries": 2,
            "retry_base_delay": 0.01,
            "kubernetes_jwt_path": self.dir / "no-such-jwt",
        }
        base.update(kw)
        return VaultSettings(**base)  # type: ignore[arg-type]


def _config(d: Path, ip_port: int, named_port: int, tls12_port: int) -> Path:
    """Three listeners that require a client certificate signed by ``ca.crt``."""

    def listener(port: int, cert: str, extra: str = "") -> str:
        return f"""
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_cert_file = "{d / f"{cert}.crt"}"
  tls_key_file = "{d / f"{cert}.key"}"
  tls_client_ca_file = "{d / "ca.crt"}"
  tls_require_and_verify_client_cert = true{extra}
}}"""

    cfg = d / "mtls.hcl"
    cfg.write_text(
        listener(ip_port, "server")
        + listener(named_port, "named")
        + listener(tls12_port, "server", '\n  tls_max_version = "tls12"')
        + "\n"
    )
    return cfg


async def _setup(http_addr: str, token: str, ca_pem: str, other_ca_pem: str) -> None:
    async with VaultClient(VaultSettings(addr=http_addr, token=token)) as root:
        await root.write(SECRET_PATH, {"data": {"canary": CANARY}})
        await root.write(
            "sys/policies/acl/mtls-read",
            {"policy": f'path "{SECRET_PATH}" {{ capabilities = ["read"] }}'},
        )
        await root.write("sys/auth/cert", {"type": "cert"})
        await root.write(
            "auth/cert/certs/maily-api",
            {
                "certificate": ca_pem,
                "allowed_common_names": ["maily-api"],
                "token_policies": ["mtls-read"],
                "token_ttl": "10m",
            },
        )
        await root.write(
            "auth/cert/certs/other",
            {"certificate": other_ca_pem, "token_policies": ["mtls-read"]},
        )


@pytest.fixture(scope="module")
def mtls_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsBao]:
    import asyncio

    d = tmp_path_factory.mktemp("mtls-bao")
    other = d / "other"
    other.mkdir()
    ca = make_ca(d)
    issue(d, ca, "server", "vault.test", ips=["127.0.0.1"])
    issue(d, ca, "named", "vault.internal", dns_names=["vault.internal"])
    client = issue(d, ca, "client", "maily-api", client=True)
    other_ca = make_ca(other, "Other CA")
    other_client = issue(other, other_ca, "client", "maily-api", client=True)
    http_port, ip_port, named_port, tls12_port = (free_port() for _ in range(4))
    token = "mtls-" + secrets.token_urlsafe(16)
    argv = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-listen-address=127.0.0.1:{http_port}",
        "-dev-no-store-token",
        f"-config={_config(d, ip_port, named_port, tls12_port)}",
    ]
    http_addr = f"http://127.0.0.1:{http_port}"
    with running(argv, d / "server.log", env={"BAO_DEV_ROOT_TOKEN_ID": token}):
        deadline = time.monotonic() + 30
        while health(http_addr) is None:
            assert time.monotonic() < deadline, (d / "server.log").read_text()[-2000:]
            time.sleep(0.05)
        asyncio.run(_setup(http_addr, token, ca[0].read_text(), other_ca[0].read_text()))
        yield MtlsBao(
            ip_addr=f"https://127.0.0.1:{ip_port}",
            tls12_addr=f"https://127.0.0.1:{tls12_port}",
            named_addr=f"https://127.0.0.1:{named_port}",
            http_addr=http_addr,
            token=token,
            ca=ca[0],
            client=client,
            other_client=other_client,
            other_ca=other_ca[0],
            dir=d,
        )


async def _canary(settings: VaultSettings) -> str:
    async with VaultClient(settings) as c:
        r = await c.read(SECRET_PATH)
        return str(((r.data or {}).get("data") or {})["canary"])


# ------------------------------------------------------------------ mutual TLS
@pytest.mark.parametrize(
    ("listener", "alert"),
    [
        ("ip_addr", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("tls12_addr", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    ],
)
async def test_without_a_client_certificate_the_error_names_the_settings(
    mtls_bao: MtlsBao, listener: str, alert: str
) -> None:
    settings = mtls_bao.settings(
        addr=getattr(mtls_bao, listener), token=mtls_bao.token, client_cert=None, client_key=None
    )
    async with VaultClient(settings) as c:
        with pytest.raises(
            VaultUnavailable, match=r"requires a client certificate.*set VAULT_CLIENT_CERT and"
        ) as ei:
            await c.read(SECRET_PATH)
        assert c.stats["GET"] == 1, "a refused handshake is not retried"
    assert alert in str(ei.value)


async def test_a_tls12_listener_accepts_the_client_certificate(mtls_bao: MtlsBao) -> None:
    assert (
        await _canary(mtls_bao.settings(addr=mtls_bao.tls12_addr, token=mtls_bao.token)) == CANARY
    )


async def test_client_certificate_from_the_environment_gives_mutual_tls(
    mtls_bao: MtlsBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in list(os.environ):
        if k.startswith(("VAULT_", "BAO_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("VAULT_ADDR", mtls_bao.ip_addr)
    monkeypatch.setenv("VAULT_TOKEN", mtls_bao.token)
    monkeypatch.setenv("VAULT_CACERT", str(mtls_bao.ca))
    monkeypatch.setenv("VAULT_CLIENT_CERT", str(mtls_bao.client[0]))
    monkeypatch.setenv("BAO_CLIENT_KEY", str(mtls_bao.client[1]))  # OpenBao's spelling too
    assert await _canary(VaultSettings()) == CANARY


async def test_a_client_certificate_of_an_untrusted_ca_is_refused_clearly(
    mtls_bao: MtlsBao,
) -> None:
    cert, key = mtls_bao.other_client
    async with VaultClient(
        mtls_bao.settings(token=mtls_bao.token, client_cert=cert, client_key=key)
    ) as c:
        with pytest.raises(VaultUnavailable, match="refused the client certificate") as ei:
            await c.read(SECRET_PATH)
        assert c.stats["GET"] == 1
    assert "UNKNOWN_CA" in str(ei.value) and str(cert) in str(ei.value)


def test_certificate_and_key_that_do_not_match_are_a_configuration_error(
    mtls_bao: MtlsBao,
) -> None:
    """Found when the pool is made, naming both files, never their contents."""
    import asyncio

    settings = mtls_bao.settings(token=mtls_bao.token, client_key=mtls_bao.other_client[1])

    with pytest.raises(ConfigurationError, match="cannot be loaded as a pair") as ei:
        asyncio.run(_canary(settings))
    assert ei.value.variable == "VAULT_CLIENT_CERT"
    key_pem = mtls_bao.other_client[1].read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    for text in (str(ei.value), repr(settings), repr(ei.value)):
        assert body[:40] not in text and "PRIVATE KEY-----" not in text


def test_an_encrypted_key_is_refused_without_a_passphrase_prompt(
    mtls_bao: MtlsBao, tmp_path: Path
) -> None:
    import asyncio

    key = serialization.load_pem_private_key(mtls_bao.client[1].read_bytes(), password=None)
    enc = tmp_path / "client-enc.key"
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass-" + CANARY.encode()),
        )
    )
    settings = mtls_bao.settings(token=mtls_bao.token, client_key=enc)
    with pytest.raises(ConfigurationError, match="VAULT_CLIENT_KEY is encrypted") as ei:
        asyncio.run(_canary(settings))
    assert ei.value.variable == "VAULT_CLIENT_KEY"


def test_only_one_of_certificate_and_key_is_a_configuration_error(mtls_bao: MtlsBao) -> None:
    with pytest.raises(ConfigurationError) as ei:
        VaultSettings(addr=mtls_bao.ip_addr, client_cert=mtls_bao.client[0])
    assert ei.value.variable == "VAULT_CLIENT_KEY"
    with pytest.raises(ConfigurationError, match="holds no PEM private key") as ei:
        VaultSettings(
            addr=mtls_bao.ip_addr, client_cert=mtls_bao.client[0], client_key=mtls_bao.client[0]
        )
    assert ei.value.variable == "client_key"  # a keyword is named as given


# ------------------------------------------------------------------ VAULT_CAPATH
async def test_capath_directory_of_plainly_named_files_is_trusted(
    mtls_bao: MtlsBao, tmp_path: Path
) -> None:
    """Every file counts (as for the Vault CLI): no c_rehash names needed."""
    d = tmp_path / "cas"
    d.mkdir()
    shutil.copy(mtls_bao.other_ca, d / "another-ca.pem")
    shutil.copy(mtls_bao.ca, d / "maily-ca.pem")
    settings = mtls_bao.settings(token=mtls_bao.token, cacert=None, capath=d)
    assert await _canary(settings) == CANARY


async def test_capath_directory_made_by_openssl_rehash_is_trusted(
    mtls_bao: MtlsBao, tmp_path: Path
) -> None:
    d = tmp_path / "hashed"
    d.mkdir()
    shutil.copy(mtls_bao.ca, d / "ca.pem")
    subprocess.run(["openssl", "rehash", str(d)], check=True, timeout=30)
    assert any(p.name.endswith(".0") and p.is_symlink() for p in d.iterdir())
    settings = mtls_bao.settings(token=mtls_bao.token, cacert=None, capath=d)
    assert await _canary(settings) == CANARY


async def test_capath_without_the_servers_ca_names_capath_in_the_error(
    mtls_bao: MtlsBao, tmp_path: Path
) -> None:
    d = tmp_path / "wrong"
    d.mkdir()
    shutil.copy(mtls_bao.other_ca, d / "other.pem")
    async with VaultClient(mtls_bao.settings(token=mtls_bao.token, cacert=None, capath=d)) as c:
        with pytest.raises(VaultUnavailable, match="set VAULT_CAPATH to the CA"):
            await c.read(SECRET_PATH)


def test_capath_with_a_file_that_is_no_certificate_is_a_configuration_error(
    mtls_bao: MtlsBao, tmp_path: Path
) -> None:
    import asyncio

    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(mtls_bao.ca, d / "ca.pem")
    (d / "README").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="README holds no PEM certificate") as ei:
        asyncio.run(_canary(mtls_bao.settings(token=mtls_bao.token, cacert=None, capath=d)))
    assert ei.value.variable == "VAULT_CAPATH"
    with pytest.raises(ConfigurationError, match="is not a directory") as ei:
        VaultSettings(capath=d / "ca.pem")
    assert ei.value.variable == "capath"


# ------------------------------------------------------------------ VAULT_TLS_SERVER_NAME
async def test_tls_server_name_checks_the_certificate_for_that_name(mtls_bao: MtlsBao) -> None:
    addr, token = mtls_bao.named_addr, mtls_bao.token
    async with VaultClient(mtls_bao.settings(addr=addr, token=token)) as c:
        with pytest.raises(VaultUnavailable, match="set VAULT_TLS_SERVER_NAME to a name in"):
            await c.read(SECRET_PATH)
    named = mtls_bao.settings(addr=addr, token=token, tls_server_name="vault.internal")
    assert await _canary(named) == CANARY
    wrong = mtls_bao.settings(addr=addr, token=token, tls_server_name="other.internal")
    async with VaultClient(wrong) as c:
        with pytest.raises(VaultUnavailable, match=r"VAULT_TLS_SERVER_NAME is 'other\.internal'"):
            await c.read(SECRET_PATH)
        assert c.stats["GET"] == 1


# ------------------------------------------------------------------ cert auth
async def test_cert_auth_logs_in_with_the_client_certificate(mtls_bao: MtlsBao) -> None:
    settings = mtls_bao.settings(auth_method="cert", cert_role="maily-api")
    async with VaultClient(settings) as c:
        r = await c.read(SECRET_PATH)
        assert r.data is not None and r.data["data"]["canary"] == CANARY
        assert c.tokens.method.name == "cert" and c.tokens.logins == 1
        t = c.tokens.current()
        assert t is not None and 0 < t.ttl <= 600
        # a policy-limited token, not root: other paths are denied
        with pytest.raises(Exception, match="permission denied"):
            await c.read("sys/mounts")


async def test_auto_picks_cert_auth_when_a_client_certificate_and_no_token_is_given(
    mtls_bao: MtlsBao, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token
    settings = mtls_bao.settings()  # no role name: any role that trusts the cert
    assert settings.auth_method == "auto" and settings.token is None
    async with VaultClient(settings) as c:
        r = await c.read(SECRET_PATH)
        assert r.data is not None and r.data["data"]["canary"] == CANARY
        assert c.tokens.method.name == "cert"


async def test_a_token_wins_over_the_client_certificate_in_auto(mtls_bao: MtlsBao) -> None:
    async with VaultClient(mtls_bao.settings(token=mtls_bao.token)) as c:
        await c.read(SECRET_PATH)
        assert c.tokens.method.name == "token"


async def test_cert_login_as_a_role_that_does_not_trust_the_cert_is_auth_failed(
    mtls_bao: MtlsBao,
) -> None:
    settings = mtls_bao.settings(auth_method="cert", cert_role="other")
    async with VaultClient(settings) as c:
        with pytest.raises(AuthFailed, match=r"cert login as role 'other' at auth/cert") as ei:
            await c.read(SECRET_PATH)
    assert "VAULT_CERT_ROLE" in str(ei.value)


def test_cert_auth_without_a_client_certificate_says_what_to_set() -> None:
    from maily_secrets.vault.auth import auth_from_settings

    with pytest.raises(AuthFailed, match="set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY"):
        auth_from_settings(VaultSettings(auth_method="cert"))


async def test_no_key_token_or_value_in_the_logs_of_an_mtls_cert_auth_session(
    mtls_bao: MtlsBao, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    key_body = "".join(mtls_bao.client[1].read_text().splitlines()[1:-1])
    settings = mtls_bao.settings(auth_method="cert", cert_role="maily-api")
    async with VaultClient(settings) as c:
        await c.read(SECRET_PATH)
        t = c.tokens.current()
        assert t is not None
        token = t.value
        shown = repr(c) + repr(c.tokens) + repr(settings) + repr(t)
    assert "vault login ok" in caplog.text
    for secret in (key_body[:32], token, CANARY):
        assert secret not in caplog.text and secret not in shown
