"""``adapters.smtp_sender``: a pool of logged-in SMTP connections that follows the ``smtp``
rotation, against a real aiosmtpd with AUTH, a real OpenBao and the real ``smtp`` rotator.

* rotate + retire: the SMTP stand-in of ``mailyctl dev up`` (aiosmtpd authenticating
  against a registry of salted hashes) and its hook command; ``mailyctl secrets rotate
  --secret-types=smtp`` runs as a subprocess under a load of sends, then the engine
  retires the previous password at the end of the grace (``now`` moved past it);
* a login refused right after a rotation the listener has not reported yet: one retry
  with the credential read again from Vault (``tests/kit/smtp.py``'s aiosmtpd);
* TLS: no plaintext AUTH unless ``tls="none"`` is said; STARTTLS with a CA bundle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from maily_secrets import adapters
from maily_secrets.adapters.smtp import SmtpSender, SmtpSendError
from maily_secrets.dev.standins import CredentialStore, smtp_controller, smtp_hook_argv
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.smtp import SmtpRotator
from maily_secrets.rotation.state import StateStore
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.certs import self_signed, server_tls_context
from .kit.rotation import all_log_text, hexid, rotation_ctx, scratch_mount
from .kit.smtp import start_smtp
from .secrecy import assert_absent

# the test servers take AUTH without TLS on loopback on purpose (said with tls="none")
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"


@pytest.fixture(scope="module")
async def mount(bao: Bao) -> AsyncIterator[str]:
    async with scratch_mount(bao, "adapt-smtp") as m:
        yield m


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


def service(bao: Bao, mount: str, interval: float = 0.2) -> VaultService:
    return VaultService(
        VaultSettings(
            addr=bao.addr,
            token=bao.token,
            auth_method="token",
            kv_mount=mount,
            listener_interval=interval,
        )
    )


async def write_config(client: VaultClient, mount: str, port: int, creds: tuple[str, str]) -> str:
    name = f"config-{hexid()}"
    data = {
        "smtp_host": "127.0.0.1",
        "smtp_port": str(port),
        "smtp_username": creds[0],
        "smtp_password": creds[1],
        "jwt_secret": "j-" + uuid.uuid4().hex,  # another type's key
    }
    await client.kv.write(KV2Path(mount, name), data, cas=0)
    return name


def message(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "noreply@maily.test"
    m["To"] = f"user{n % 10}@example.test"
    m["Subject"] = f"message {n}"
    m.set_content("hello")
    return m


async def until(cond: Callable[[], bool], within: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0.02)


class SendLoad:
    """``tasks`` senders in a loop on the test's event loop."""

    def __init__(self, sender: SmtpSender, tasks: int = 8) -> None:
        self.sender = sender
        self.ok = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._n = tasks
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                await self.sender.send(message(i * 1_000_000 + n))
            except Exception as exc:  # counted, reported by type
                self.errors.append(type(exc).__name__)
            else:
                self.ok += 1
            await asyncio.sleep(0)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(self._n)]

    async def more(self, n: int) -> None:
        target = self.ok + n
        await until(lambda: self.ok >= target, what=f"{n} more sends")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@dataclass
class HookSmtp:
    ctl: Controller
    store: CredentialStore
    secret: str
    initial: tuple[str, str] = field(repr=False)
    options: dict[str, Any]

    @property
    def received(self) -> int:
        return int(self.ctl.handler.received)


@pytest.fixture
async def hook_smtp(client: VaultClient, mount: str, tmp_path: Path) -> AsyncIterator[HookSmtp]:
    store = CredentialStore(tmp_path / "smtp-credentials.json")
    initial = ("maily", "CANARY-initial-" + uuid.uuid4().hex)
    store.add(*initial, "initial")
    ctl = smtp_controller(store.path)
    ctl.start()
    try:
        name = await write_config(client, mount, ctl.port, initial)
        options = {
            "provider": "hook",
            "tls": "none",  # the stand-in has no TLS: plaintext AUTH, said explicitly
            "hook": smtp_hook_argv(store.path),
            "retire_hook": True,
            "verify_timeout": 5,
        }
        yield HookSmtp(ctl, store, name, initial, options)
    finally:
        ctl.stop()


def config_file(bao: Bao, mount: str, w: HookSmtp, tmp: Path, prefix: str) -> Path:
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    doc["types"] = {"smtp": {"secret": w.secret, "grace": "1h", "options": w.options}}
    doc["defaults"]["intervals"] = {"smtp": "180d"}
    for env in doc["environments"].values():
        env.pop("intervals", None)
        env["state_prefix"] = prefix
        env["vault"] = {"addr": bao.addr, "kv_mount": mount, "auth_method": "token"}
        env["lock_ttl"] = "30s"
    path = tmp / f"rotation-{hexid()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_sends_switch_to_the_new_login_through_rotate_and_retire_without_failures(
    hook_smtp: HookSmtp,
    bao: Bao,
    client: VaultClient,
    mount: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    w = hook_smtp
    prefix = f"rotation-{hexid()}"
    config = config_file(bao, mount, w, tmp_path, prefix)
    svc = service(bao, mount)
    sender = await adapters.smtp_sender(svc, secret=w.secret, tls="none", client_name="maily-test")
    load = SendLoad(sender)
    load.start()
    try:
        await load.more(30)
        assert sender.stats()["connections"] == {1: 4}, sender.stats()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update({"VAULT_TOKEN": bao.token, "MAILY_ROTATION_CONFIG": str(config)})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "mailyctl.py"),
            "secrets",
            "rotate",
            "--secret-types=smtp",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        output = out.decode() + err.decode()
        assert proc.returncode == 0, output
        new = (await client.kv.read(KV2Path(mount, w.secret))).data
        assert new["smtp_password"] != w.initial[1]
        # the listener switched the sender; the old login's connections close when returned
        await until(lambda: sender.generation == 2, what="the switch")
        await load.more(30)
        await until(lambda: 1 not in sender.stats()["connections"], what="old connections closed")
        assert w.store.check(*w.initial), "the previous password works until it is retired"
        # usage(): the SMTP provider cannot tell who logs in with which password
        rot = SmtpRotator()
        ctx = rotation_ctx("smtp", client, w.secret, options=w.options, prefix=prefix)
        state, _ = await StateStore(client, mount, prefix).read("smtp")
        assert state is not None and len(state.retiring) == 1
        seen = await rot.usage(ctx, state.retiring[0].data)
        assert seen is not None and seen.current is not None and seen.previous is not None
        assert seen.previous.observable is False and seen.previous.idle is None
        assert "does not report" in seen.previous.note
        # retirement at the end of the grace, under load
        engine = RotationEngine(
            RotationConfig.load(config),
            "development",
            client=client,
            now=lambda: datetime.now(UTC) + timedelta(hours=2),
        )
        res = (await engine.run(["smtp"], due_only=True)).results[0]
        assert res.status == "skipped" and "not due" in res.reason, res.reason
        assert not w.store.check(*w.initial), "the retired password must be refused"
        await load.more(50)
    finally:
        await load.stop()
        await sender.close()
        await svc.close()
    assert load.errors == [], f"failed sends: {sorted(set(load.errors))}"
    stats = sender.stats()
    assert stats["sent"] == load.ok and stats["failed"] == 0
    assert stats["auth_retries"] == 0 and stats["generation"] == 2
    await until(lambda: w.received == load.ok, within=5, what="every message received")
    # an application started now logs in with the credential in Vault
    svc2 = service(bao, mount)
    fresh = await adapters.smtp_sender(svc2, secret=w.secret, tls="none")
    try:
        await fresh.send(message(0))
    finally:
        await fresh.close()
        await svc2.close()
    text = "\n".join([repr(sender), repr(sender.feed), str(stats), output])
    for s in (w.initial[1], str(new["smtp_password"])):
        assert_absent(s, text, "a repr, the stats or the CLI output")
        assert_absent(s, all_log_text(caplog), "the logs")


@pytest.fixture
def accepting() -> Iterator[tuple[set[tuple[str, str]], Any]]:
    """An aiosmtpd that accepts the logins in a set the test changes."""
    ok: set[tuple[str, str]] = set()
    ctl, box = start_smtp(lambda u, p: (u, p) in ok)
    try:
        yield ok, box
    finally:
        ctl.stop()


async def test_a_login_refused_after_an_unnoticed_rotation_retries_with_the_credential_in_vault(
    accepting: tuple[set[tuple[str, str]], Any], bao: Bao, client: VaultClient, mount: str
) -> None:
    ok, box = accepting
    first = ("maily", "CANARY-one-" + uuid.uuid4().hex)
    second = ("maily", "CANARY-two-" + uuid.uuid4().hex)
    ok.add(first)
    name = await write_config(client, mount, box.port, first)
    svc = service(bao, mount, interval=3600)  # the listener will not notice in this test
    sender = await adapters.smtp_sender(svc, secret=name, tls="none")
    try:
        await sender.send(message(1))
        assert sender.stats()["connections"] == {1: 1}
        # rotated and retired at the provider and in Vault, unknown to the sender yet
        path = KV2Path(mount, name)
        cur = await client.kv.read(path)
        await client.kv.write(path, {**cur.data, "smtp_password": second[1]}, cas=cur.version)
        ok.clear()
        ok.add(second)
        # two at once: the second needs a new connection, refused with the old password
        await asyncio.gather(sender.send(message(2)), sender.send(message(3)))
        stats = sender.stats()
        assert stats["auth_retries"] == 1 and stats["generation"] == 2 and stats["sent"] == 3
        assert [r for _, _, r in box.logins] == ["ok", "rejected", "ok"], box.logins
        # the old login's connection was closed when it was returned
        assert stats["connections"] == {2: 1}
        await sender.send(message(4))
        assert len(box.logins) == 3  # reused the new login's connection
        # nobody accepted any more: the pooled connection (logged in) still sends; a new
        # one is refused, read again, refused again: an error, after one retry only
        ok.clear()
        done = await asyncio.gather(
            sender.send(message(5)), sender.send(message(6)), return_exceptions=True
        )
        assert isinstance(done[0], dict) and isinstance(done[1], SmtpSendError)
        assert [r for _, _, r in box.logins][3:] == ["rejected", "rejected"]
        assert sender.stats()["failed"] == 1 and sender.stats()["sent"] == 5
    finally:
        await sender.close()
        await svc.close()
    assert len(box.received) == sender.stats()["sent"]


async def test_an_error_names_the_server_never_the_password(
    accepting: tuple[set[tuple[str, str]], Any], bao: Bao, client: VaultClient, mount: str
) -> None:
    _, box = accepting  # accepts nobody
    creds = ("maily", "CANARY-refused-" + uuid.uuid4().hex)
    name = await write_config(client, mount, box.port, creds)
    svc = service(bao, mount, interval=3600)
    sender = await adapters.smtp_sender(svc, secret=name, tls="none")
    try:
        with pytest.raises(SmtpSendError) as exc:
            await sender.send(message(1))
        msg = str(exc.value)
        assert f"127.0.0.1:{box.port}" in msg and "535" in msg
        assert_absent(creds[1], msg + repr(exc.value) + repr(sender), "the error")
        # refused, read again, refused again: two logins, no more
        assert [r for _, _, r in box.logins] == ["rejected", "rejected"]
        assert sender.stats()["failed"] == 1 and box.received == []
    finally:
        await sender.close()
        await svc.close()


@pytest.mark.parametrize("tls", ["auto", "starttls"])
async def test_no_plaintext_auth_unless_tls_none_is_said(
    accepting: tuple[set[tuple[str, str]], Any],
    bao: Bao,
    client: VaultClient,
    mount: str,
    tls: str,
) -> None:
    ok, box = accepting  # no STARTTLS offered
    creds = ("maily", "CANARY-plain-" + uuid.uuid4().hex)
    ok.add(creds)
    name = await write_config(client, mount, box.port, creds)
    svc = service(bao, mount, interval=3600)
    sender = await adapters.smtp_sender(svc, secret=name, tls=tls)
    try:
        with pytest.raises(SmtpSendError, match="STARTTLS"):
            await sender.send(message(1))
        assert box.logins == []  # no AUTH was sent
    finally:
        await sender.close()
    plain = await adapters.smtp_sender(svc, secret=name, tls="none")
    try:
        await plain.send(message(2))
        assert [r for _, _, r in box.logins] == ["ok"]
    finally:
        await plain.close()
        await svc.close()


async def test_starttls_with_a_ca_bundle(
    bao: Bao, client: VaultClient, mount: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    creds = ("maily", "CANARY-tls-" + uuid.uuid4().hex)
    ctl, box = start_smtp(
        lambda u, p: (u, p) == creds,
        tls_context=server_tls_context(cert, key),
        require_starttls=True,
        auth_require_tls=True,
    )
    try:
        name = await write_config(client, mount, box.port, creds)
        svc = service(bao, mount, interval=3600)
        try:
            untrusted = await adapters.smtp_sender(svc, secret=name)  # auto on 587-ish: STARTTLS
            try:
                with pytest.raises(SmtpSendError):
                    await untrusted.send(message(1))  # the self-signed certificate is refused
            finally:
                await untrusted.close()
            assert box.logins == []
            sender = await adapters.smtp_sender(svc, secret=name, cafile=str(cert))
            try:
                await sender.send(message(2))
            finally:
                await sender.close()
        finally:
            await svc.close()
    finally:
        ctl.stop()
    assert [r for _, _, r in box.logins] == ["ok"]
    assert box.received[0]["tls"] is True
