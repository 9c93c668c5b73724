"""The ``smtp`` rotator against real servers: OpenBao, aiosmtpd with AUTH, moto (SES keys).

* ``hook`` provider: the SMTP stand-in of ``mailyctl dev up`` (``maily_secrets.dev.standins``:
  aiosmtpd + a 0600 registry of salted hashes) and its hook command, run as a real
  subprocess: a rotation really changes which passwords the server accepts.
* ``ses`` provider: IAM keys in moto (server mode, IAM auth on) and a fake SES SMTP
  endpoint (aiosmtpd) that accepts ``<access key id>`` / the SES SMTP password derived
  from that key's secret (as moto holds it), only while the key exists and is active;
  the derivation there is an independent implementation (``cryptography``'s HMAC).

One KV v2 mount for the module; one consumer secret per test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac

from maily_secrets.dev.standins import CredentialStore, free_port, smtp_controller, smtp_hook_argv
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.base import (
    ActionRequired,
    RotationContext,
    RotationError,
    RotatorConfigError,
    rotator_for,
)
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.smtp import SmtpError, SmtpRotator, SmtpServer, smtp_session
from maily_secrets.rotation.state import StateStore
from maily_secrets.targets.aws_iam import region_of_ses_host, ses_smtp_password
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.certs import self_signed, server_tls_context
from .kit.rotation import Clock, Traffic, all_log_text, hexid, rotate, rotation_ctx, scratch_mount
from .kit.smtp import SMTP_PASSWORD, SMTP_USER, Check, smtp_server, start_smtp
from .moto_server import Moto, moto
from .secrecy import assert_absent

__all__ = ["moto"]
# the test servers take AUTH without TLS on loopback on purpose (one test uses STARTTLS)
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
T0 = datetime(2030, 1, 15, 3, 0, tzinfo=UTC)
SES_REGION = "eu-west-1"


def ses_independent(secret: str, region: str) -> str:
    """AWS's documented SES SMTP password algorithm, written again with another HMAC."""
    key = ("AWS4" + secret).encode()
    for part in ("11111111", region, "ses", "aws4_request", "SendRawEmail"):
        h = chmac.HMAC(key, hashes.SHA256())
        h.update(part.encode())
        key = h.finalize()
    return base64.b64encode(b"\x04" + key).decode()


@pytest.fixture(scope="module")
async def mount(bao: Bao) -> AsyncIterator[str]:
    async with scratch_mount(bao, "rot-smtp") as m:
        yield m


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


# ---------------------------------------------------------------------------- the world
@dataclass
class World:
    client: VaultClient
    mount: str
    secret: str
    host: str
    port: int
    initial: tuple[str, str] = field(repr=False)  # a failed assert shows no password
    options: dict[str, Any]
    secrets: list[str] = field(default_factory=list, repr=False)

    @property
    def path(self) -> KV2Path:
        return KV2Path(self.mount, self.secret)

    def ctx(self, now: Callable[[], datetime] | None = None, **options: Any) -> RotationContext:
        opts = {**self.options, **options}
        return rotation_ctx("smtp", self.client, self.secret, options=opts, now=now)

    async def data(self) -> tuple[dict[str, Any], int]:
        v = await self.client.kv.read(self.path)
        return v.data, v.version

    async def creds(self) -> tuple[str, str]:
        d = (await self.data())[0]
        return str(d["smtp_username"]), str(d["smtp_password"])

    def works(self, creds: tuple[str, str]) -> bool:
        try:
            tls = str(self.options.get("tls", "auto"))
            smtp_session(SmtpServer(self.host, self.port, tls, None, 5), *creds)
        except SmtpError:
            return False
        return True

    def config(self, tmp: Path, prefix: str) -> RotationConfig:
        doc = yaml.safe_load(DEFAULT_YAML.read_text())
        doc["types"] = {"smtp": {"secret": self.secret, "grace": "1h", "options": self.options}}
        doc["defaults"]["intervals"] = {"smtp": "180d"}
        for env in doc["environments"].values():
            env.pop("intervals", None)
            env["state_prefix"] = prefix
        path = tmp / f"rotation-{hexid()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return RotationConfig.load(path)


async def write_consumer(
    client: VaultClient, mount: str, host: str, port: int, creds: tuple[str, str]
) -> str:
    name = f"config-{hexid()}"
    await client.kv.write(
        KV2Path(mount, name),
        {
            "smtp_host": host,
            "smtp_port": port,
            "smtp_username": creds[0],
            "smtp_password": creds[1],
            "db_password": "db-" + uuid.uuid4().hex,  # another type's key
        },
        cas=0,
    )
    return name


@dataclass
class HookWorld(World):
    store: CredentialStore = field(default_factory=lambda: CredentialStore(Path("/nonexistent")))


@pytest.fixture
async def hook_world(client: VaultClient, mount: str, tmp_path: Path) -> AsyncIterator[HookWorld]:
    store = CredentialStore(tmp_path / "smtp-credentials.json")
    initial = ("maily", "initial-" + uuid.uuid4().hex)
    store.add(*initial, "initial")
    ctl = smtp_controller(store.path)
    ctl.start()
    try:
        name = await write_consumer(client, mount, "127.0.0.1", ctl.port, initial)
        options = {
            "provider": "hook",
            "tls": "none",  # this SMTP stand-in has no TLS: plaintext AUTH, said explicitly
            "hook": smtp_hook_argv(store.path),
            "retire_hook": True,
            "verify_timeout": 2,
        }
        yield HookWorld(
            client, mount, name, "127.0.0.1", ctl.port, initial, options, [initial[1]], store
        )
    finally:
        ctl.stop()


@dataclass
class SesWorld(World):
    moto: Moto | None = None
    user: str = ""

    def keys(self) -> set[str]:
        assert self.moto is not None
        return self.moto.key_ids(self.user)


def ses_check(moto: Moto) -> Check:
    """A fake SES SMTP endpoint: <key id> / the SES password of that key, while it is active."""

    def check(key_id: str, password: str) -> bool:
        rec = moto.secret_of(key_id)
        return (
            rec is not None
            and rec[1] == "Active"
            and password == ses_independent(rec[0], SES_REGION)
        )

    return check


@pytest.fixture
async def ses_world(moto: Moto, client: VaultClient, mount: str) -> AsyncIterator[SesWorld]:
    user, akid, secret = moto.user("ses")
    ctl, box = start_smtp(ses_check(moto))
    try:
        initial = (akid, ses_smtp_password(secret, SES_REGION))
        name = await write_consumer(client, mount, "127.0.0.1", box.port, initial)
        admin = f"rotator/aws-admin-{hexid()}"
        await client.kv.write(
            KV2Path(mount, admin),
            {"aws_access_key": moto.admin[0], "aws_secret_key": moto.admin[1]},
            cas=0,
        )
        options = {
            "provider": "ses",
            "tls": "none",  # this SMTP stand-in has no TLS: plaintext AUTH, said explicitly
            "iam_user": user,
            "region": SES_REGION,
            "iam_credentials": "vault",
            "iam_credentials_secret": admin,
            "endpoint_url": moto.endpoint,
            "verify_timeout": 3,
        }
        yield SesWorld(
            client,
            mount,
            name,
            "127.0.0.1",
            box.port,
            initial,
            options,
            [secret, initial[1], moto.admin[1]],
            moto,
            user,
        )
    finally:
        ctl.stop()


# ---------------------------------------------------------------------------- SES derivation
def test_ses_smtp_password_test_vector() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documentation example key
    # computed with ses_independent() (cryptography's HMAC), pinned
    assert ses_independent(secret, "us-east-1") == "BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9"
    assert ses_independent(secret, "eu-west-1") == "BMW5RDrXmmVs0lV7GpI4oLkHXpZ4stDsk6q91z1g38Pk"
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):
        assert ses_smtp_password(secret, region) == ses_independent(secret, region)
    for _ in range(20):
        s = base64.b64encode(os.urandom(30)).decode()
        assert ses_smtp_password(s, "us-west-2") == ses_independent(s, "us-west-2")
    raw = base64.b64decode(ses_smtp_password(secret, "us-east-1"))
    assert raw[0] == 0x04 and len(raw) == 33


def test_region_from_the_ses_host() -> None:
    assert region_of_ses_host("email-smtp.eu-west-1.amazonaws.com") == "eu-west-1"
    assert region_of_ses_host("email-smtp-fips.us-gov-west-1.amazonaws.com") == "us-gov-west-1"
    assert region_of_ses_host("smtp.example.com") is None


def test_registered_as_smtp() -> None:
    rot = rotator_for("smtp")
    assert isinstance(rot, SmtpRotator) and rot.two_slots


# ---------------------------------------------------------------------------- hook
async def test_hook_rotation_while_in_use_previous_valid_until_retired(
    hook_world: HookWorld, caplog: pytest.LogCaptureFixture
) -> None:
    w = hook_world
    caplog.set_level(logging.DEBUG)
    rot = SmtpRotator()
    ctx = w.ctx()
    before, _ = await w.data()
    app = Traffic(w.creds, w.works, part=1, tail=6)
    app.start()
    try:
        await app.until_seen(w.initial[1])
        pending, version = await rotate(rot, ctx)
        w.secrets.append(pending["password"])
        assert pending["username"] == "maily" and pending["credential_id"] == ctx.rotation_id
        await app.until_seen(pending["password"])
        assert w.works(w.initial), "the previous password must work until it is retired"
        retiring = rot.retiring(ctx, pending)
        assert retiring is not None and retiring["username"] == "maily"
        assert "password" not in json.dumps(retiring)
        await rot.retire(ctx, retiring)
        await app.until_seen(
            pending["password"], times=app.seen.count(pending["password"][-6:]) + 3
        )
    finally:
        await app.stop()
    assert app.failed == 0 and app.ok > 6
    assert not w.works(w.initial), "the retired password must be refused"
    assert w.store.ids("maily") == [ctx.rotation_id]
    after, now_version = await w.data()
    assert now_version == version and after["db_password"] == before["db_password"]
    assert after["smtp_host"] == before["smtp_host"]
    text = all_log_text(caplog)
    for s in w.secrets:
        assert_absent(s, text, "the logs")
    # the registry holds hashes only, mode 0600
    assert stat.S_IMODE(w.store.path.stat().st_mode) == 0o600
    for s in w.secrets:
        assert_absent(s, w.store.path.read_text(), "the registry")


def recording_hook(tmp: Path, real: list[str], record: Path) -> Path:
    script = tmp / f"hook-{hexid()}.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import hashlib, json, subprocess, sys\n"
        "data = sys.stdin.read()\n"
        "doc = json.loads(data)\n"
        "pw = doc.get('password')\n"
        "rec = {\n"
        "    'argv': sys.argv,\n"
        "    'cmdline': open('/proc/self/cmdline', 'rb').read().decode('utf-8', 'replace'),\n"
        "    'environ': open('/proc/self/environ', 'rb').read().decode('utf-8', 'replace'),\n"
        "    'stdin_password_sha256': hashlib.sha256(pw.encode()).hexdigest() if pw else None,\n"
        "}\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps(rec) + '\\n')\n"
        f"sys.exit(subprocess.run({real!r} + [sys.argv[-1]], input=data, text=True).returncode)\n"
    )
    script.chmod(0o700)
    return script


async def test_hook_gets_the_password_on_stdin_never_in_argv_or_environment(
    hook_world: HookWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = hook_world
    vault_token = "hvs.CANARY-" + uuid.uuid4().hex
    monkeypatch.setenv("VAULT_TOKEN", vault_token)  # the rotator's own; never the hook's
    record = tmp_path / "record.jsonl"
    hook = recording_hook(tmp_path, smtp_hook_argv(w.store.path), record)
    rot = SmtpRotator()
    ctx = w.ctx(hook=[str(hook), "--flag"])
    pending, _ = await rotate(rot, ctx)
    await rot.retire(ctx, rot.retiring(ctx, pending) or {})
    recs = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["argv"][-1] for r in recs] == ["apply", "retire"]
    assert recs[0]["argv"][1:] == ["--flag", "apply"]
    assert (
        recs[0]["stdin_password_sha256"] == hashlib.sha256(pending["password"].encode()).hexdigest()
    )
    for r in recs:
        for where in ("cmdline", "environ"):
            assert_absent(pending["password"], r[where], f"the hook's {where}")
            assert_absent(w.initial[1], r[where], f"the hook's {where}")
            assert_absent(vault_token, r[where], f"the hook's {where}")
        assert "MAILY_SMTP_USERNAME=maily" in r["environ"]
    assert not w.works(w.initial) and w.works(await w.creds())


async def test_hook_failure_is_clear_scrubbed_and_changes_nothing(
    hook_world: HookWorld, tmp_path: Path
) -> None:
    w = hook_world
    bad = tmp_path / "bad-hook.py"
    bad.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "doc = json.loads(sys.stdin.read())\n"
        "print('some noise', file=sys.stderr)\n"
        "print('provider refused password ' + doc['password'] + ': too weak', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    bad.chmod(0o700)
    rot = SmtpRotator()
    ctx = w.ctx(hook=[str(bad)])
    pending = await rot.create_pending(ctx)
    _, version = await w.data()
    with pytest.raises(RotationError) as exc:
        await rot.apply(ctx, pending)
    msg = str(exc.value)
    assert "exited with code 3" in msg and "bad-hook.py" in msg and "too weak" in msg
    assert "******" in msg
    assert_absent(pending["password"], msg, "the error")
    assert (await w.data())[1] == version
    assert w.store.ids() == ["initial"]


async def test_hook_crash_between_steps_then_rerun(hook_world: HookWorld) -> None:
    w = hook_world
    rot = SmtpRotator()
    ctx = w.ctx()
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.apply(ctx, pending)  # resumed after "created": apply again
    assert sorted(w.store.ids("maily")) == sorted(["initial", ctx.rotation_id])
    await rot.verify(ctx, pending)
    await rot.verify(ctx, pending)
    v1 = await rot.promote(ctx, pending)
    v2 = await rot.promote(ctx, pending)  # resumed after "promoted"
    assert v1 == v2 == (await w.data())[1]
    assert w.works(w.initial) and w.works(await w.creds())


@pytest.mark.parametrize(
    "case",
    [
        "no_provider",
        "hook_as_string",
        "hook_missing",
        "unknown_tls",
        "short_password",
        "smtp_unreachable",
        "no_smtp_host",
        "not_executable",
    ],
)
async def test_hook_bad_configuration_is_clear_and_changes_nothing(
    hook_world: HookWorld, case: str, tmp_path: Path
) -> None:
    w = hook_world
    rot = SmtpRotator()
    options: dict[str, Any] = {}
    if case == "no_provider":
        options, expect = {"provider": None}, "no SMTP provider is configured"
    elif case == "hook_as_string":
        options, expect = {"hook": "/bin/sh -c 'echo'"}, "list of strings"
    elif case == "hook_missing":
        options, expect = {"hook": [str(tmp_path / "nope")]}, "not an executable"
    elif case == "unknown_tls":
        options, expect = {"tls": "sometimes"}, "option tls"
    elif case == "short_password":
        options, expect = {"password_length": 8}, "password_length"
    elif case == "not_executable":
        f = tmp_path / "hook.sh"
        f.write_text("#!/bin/sh\n")
        options, expect = {"hook": [str(f)]}, "not an executable"
    elif case in ("smtp_unreachable", "no_smtp_host"):
        data, version = await w.data()
        if case == "smtp_unreachable":
            data["smtp_port"] = free_port()
            expect = "cannot reach SMTP server"
        else:
            del data["smtp_host"]
            expect = "has no smtp_host"
        await w.client.kv.write(w.path, data, cas=version)
    ctx = w.ctx(**options)
    data_before, version_before = await w.data()
    # no provider at all: only a person can rotate it; anything else malformed: an error
    error = ActionRequired if case == "no_provider" else RotatorConfigError
    with pytest.raises(error) as exc:
        await rot.check(ctx)
    assert expect in str(exc.value), str(exc.value)
    if case not in ("smtp_unreachable",):
        with pytest.raises(error):
            await rot.create_pending(ctx)
    assert (await w.data()) == (data_before, version_before)
    assert w.store.ids() == ["initial"]


async def test_engine_hook_that_sets_nothing_rolls_back(
    hook_world: HookWorld, tmp_path: Path
) -> None:
    """The hook exits 0 but the provider did not take the password: verify fails, the
    rotation rolls back, the credential in use is unchanged."""
    w = hook_world
    w.options = {**w.options, "hook": ["/bin/true"], "retire_hook": None, "verify_timeout": 1}
    prefix = f"rotation-{hexid()}"
    engine = RotationEngine(w.config(tmp_path, prefix), "development", client=w.client)
    data, version = await w.data()
    res = (await engine.run(["smtp"])).results[0]
    assert res.status == "rolled_back", res.reason
    assert "refused" in res.reason
    assert (await w.data()) == (data, version)
    state, _ = await StateStore(w.client, w.mount, prefix).read("smtp")
    assert state is not None and state.outcome == "rolled_back" and state.pending is None
    assert w.works(w.initial)


async def test_engine_hook_rotates_then_retires_after_grace(
    hook_world: HookWorld, tmp_path: Path
) -> None:
    w = hook_world
    clock = Clock()
    prefix = f"rotation-{hexid()}"
    config = w.config(tmp_path, prefix)

    async def run(**kw: Any) -> Any:
        engine = RotationEngine(config, "development", client=w.client, now=clock)
        return (await engine.run(["smtp"], **kw)).results[0]

    res = await run()
    assert res.status == "rotated", res.reason
    first = await w.creds()
    assert w.works(w.initial) and w.works(first)
    clock.advance(minutes=30)
    res = await run()
    assert res.status == "skipped" and "grace" in res.reason
    assert w.works(w.initial)
    clock.advance(hours=1)
    res = await run()  # retires the initial password, then rotates again
    assert res.status == "rotated", res.reason
    second = await w.creds()
    assert not w.works(w.initial) and w.works(first) and w.works(second)
    clock.advance(hours=2)
    res = await run(due_only=True)
    assert res.status == "skipped"
    assert not w.works(first) and w.works(second)
    state, _ = await StateStore(w.client, w.mount, prefix).read("smtp")
    assert state is not None and state.retiring == []
    assert len(w.store.ids("maily")) == 1


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[Controller, CredentialStore, Path]]:
    cert, key = self_signed(tmp_path)
    tls = server_tls_context(cert, key)
    store = CredentialStore(tmp_path / "tls-store.json")
    ctl = smtp_controller(store.path, tls_context=tls)
    ctl.start()
    try:
        yield ctl, store, cert
    finally:
        ctl.stop()


async def test_verify_uses_starttls_when_offered(
    tls_smtp: tuple[Controller, CredentialStore, Path], client: VaultClient, mount: str
) -> None:
    ctl, store, cert = tls_smtp
    initial = ("maily", "tls-" + uuid.uuid4().hex)
    store.add(*initial, "initial")
    name = await write_consumer(client, mount, "127.0.0.1", ctl.port, initial)
    w = World(
        client,
        mount,
        name,
        "127.0.0.1",
        ctl.port,
        initial,
        {"provider": "hook", "hook": smtp_hook_argv(store.path), "cafile": str(cert)},
    )
    rot = SmtpRotator()
    # without the CA the server's certificate is refused: a clear error, not a plaintext login
    with pytest.raises(RotationError, match="TLS with SMTP server"):
        await rot.check(w.ctx(cafile=None))
    await rotate(rot, w.ctx(tls="starttls", verify_timeout=0))
    # the server refuses AUTH without TLS: "none" cannot log in
    with pytest.raises(RotatorConfigError, match="does not offer AUTH without TLS"):
        await rot.check(w.ctx(tls="none"))


async def test_unreadable_state_is_an_error_not_an_unknown_previous_credential(
    hook_world: HookWorld,
) -> None:
    """``previous_credential_id`` None tells the retire hook to remove *every* other
    password of the user: an unreadable state must not read as "not made by a rotation"."""
    w, rot = hook_world, SmtpRotator()
    ctx = w.ctx()
    state_path = KV2Path(w.mount, f"{ctx.env.env.state_prefix}/smtp")
    version = await w.client.kv.current_version(state_path)
    version = await w.client.kv.write(state_path, {"type": "smtp", "retiring": "x"}, cas=version)
    try:
        with pytest.raises(RotationError, match="cannot read the rotation state"):
            await rot.create_pending(ctx)
    finally:
        await w.client.kv.write(state_path, {"type": "smtp", "env": "x"}, cas=version)


@pytest.mark.parametrize("tls", ["auto", "starttls"])
async def test_no_plaintext_auth_when_starttls_is_not_offered(
    hook_world: HookWorld, tls: str
) -> None:
    """STARTTLS expected (the default ``auto`` on port 587, or ``starttls``), a server that
    does not offer it: an error, and no AUTH on the plaintext connection."""
    with smtp_server() as box:
        server = SmtpServer("127.0.0.1", box.port, tls, None, 5.0)
        with pytest.raises(RotationError, match="does not offer STARTTLS"):
            await asyncio.to_thread(smtp_session, server, SMTP_USER, SMTP_PASSWORD)
        assert box.logins == []  # no AUTH was sent
        # only an explicit tls: none logs in without TLS
        none = SmtpServer("127.0.0.1", box.port, "none", None, 5.0)
        assert await asyncio.to_thread(smtp_session, none, SMTP_USER, SMTP_PASSWORD) == "no TLS"
        assert [ok for _, _, ok in box.logins] == ["ok"]
    # the rotator: check and verify refuse too (the hook's plaintext server)
    w, rot = hook_world, SmtpRotator()
    with pytest.raises(RotatorConfigError, match="does not offer STARTTLS"):
        await rot.check(w.ctx(tls=tls))
    pending = await rot.create_pending(w.ctx(tls=tls))
    with pytest.raises(RotationError, match="refusing to log in without TLS"):
        await rot.verify(w.ctx(tls=tls, verify_timeout=0), pending)


# ---------------------------------------------------------------------------- SES
async def test_ses_rotation_while_in_use_then_retire_deletes_the_old_key(
    ses_world: SesWorld, caplog: pytest.LogCaptureFixture
) -> None:
    w = ses_world
    caplog.set_level(logging.DEBUG)
    rot = SmtpRotator()
    ctx = w.ctx()
    app = Traffic(w.creds, w.works, part=1, tail=6)
    app.start()
    try:
        await app.until_seen(w.initial[1])
        pending, _ = await rotate(rot, ctx)
        w.secrets.append(pending["password"])
        new = pending["access_key_id"]
        assert pending["username"] == new and pending["previous_access_key_id"] == w.initial[0]
        assert "secret_access_key" not in pending
        await app.until_seen(pending["password"])
        assert w.keys() == {w.initial[0], new}
        assert w.works(w.initial)
        retiring = rot.retiring(ctx, pending)
        assert retiring == {"provider": "ses", "access_key_id": w.initial[0], "iam_user": w.user}
        await rot.retire(ctx, retiring)
        await rot.retire(ctx, retiring)  # already gone is fine
        await app.until_seen(
            pending["password"], times=app.seen.count(pending["password"][-6:]) + 3
        )
    finally:
        await app.stop()
    assert app.failed == 0 and app.ok > 6
    assert w.keys() == {new}
    assert not w.works(w.initial)
    text = all_log_text(caplog)
    for s in w.secrets:
        assert_absent(s, text, "the logs")


async def test_ses_crash_after_creating_the_key_then_rerun(ses_world: SesWorld) -> None:
    w = ses_world
    rot = SmtpRotator()
    ctx = w.ctx()
    await rot.create_pending(ctx)  # died before the engine saved it: an orphan key
    assert len(w.keys()) == 2
    pending = await rot.create_pending(ctx)
    assert w.keys() == {w.initial[0], pending["access_key_id"]}
    await rot.apply(ctx, pending)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)
    v1 = await rot.promote(ctx, pending)
    assert v1 == await rot.promote(ctx, pending)
    assert w.works(w.initial) and w.works(await w.creds())


async def test_ses_verify_failure_then_rollback(ses_world: SesWorld) -> None:
    w = ses_world
    rot = SmtpRotator()
    ctx = w.ctx(verify_timeout=0)
    pending = await rot.create_pending(ctx)
    w.secrets.append(pending["password"])
    wrong = {**pending, "password": ses_smtp_password("not-the-secret", SES_REGION)}
    with pytest.raises(RotationError, match="refused") as exc:
        await rot.verify(ctx, wrong)
    assert_absent(pending["password"], str(exc.value), "the error")
    await rot.rollback(ctx, pending)
    assert w.keys() == {w.initial[0]}
    assert await w.creds() == w.initial


@pytest.mark.parametrize("case", ["no_iam_user", "no_region", "no_such_user", "self"])
async def test_ses_bad_configuration_is_clear_and_changes_nothing(
    ses_world: SesWorld, case: str
) -> None:
    w = ses_world
    rot = SmtpRotator()
    options: dict[str, Any] = {}
    if case == "no_iam_user":
        options, expect = {"iam_user": None}, "iam_user"
    elif case == "no_region":
        options, expect = {"region": None}, "option region is not set"
    elif case == "no_such_user":
        options, expect = {"iam_user": f"nobody-{hexid()}"}, "NoSuchEntity"
    else:
        options, expect = {"iam_credentials": "self"}, "iam_credentials must be one of"
    ctx = w.ctx(**options)
    if case == "no_iam_user":
        ctx.type_config.options.pop("iam_user")
    if case == "no_region":
        ctx.type_config.options.pop("region")
    before = (await w.data(), w.keys())
    for step in (rot.check, rot.create_pending):
        with pytest.raises(RotatorConfigError) as exc:
            await step(ctx)
        assert expect in str(exc.value), str(exc.value)
        for s in w.secrets:
            assert_absent(s, str(exc.value), "the error")
    assert (await w.data(), w.keys()) == before
