"""``adapters.aws_session``: a boto3 session that follows the ``aws`` rotation, proven
against a real moto server (IAM authentication on: a retired key is refused like on
AWS), a real OpenBao, ``mailyctl secrets rotate`` as a subprocess and the engine's
retirement at the end of the grace.

moto records ``GetAccessKeyLastUsed`` on every request it receives (``moto/core/
responses.py`` calls ``mark_account_as_visited`` with the request's access key id,
service and region, at once; AWS does it with a delay of up to hours), so the server
itself tells which key signed the requests after the switch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from maily_secrets import adapters
from maily_secrets.adapters.aws import AwsSession
from maily_secrets.dev.standins import SELF_ROTATION_POLICY
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.aws import AwsAccessKeyRotator
from maily_secrets.rotation.state import StateStore
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.rotation import all_log_text, hexid, rotation_ctx, scratch_mount
from .moto_server import REGION, Moto, moto
from .secrecy import assert_absent

__all__ = ["moto"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"


@pytest.fixture(scope="module")
async def mount(bao: Bao) -> AsyncIterator[str]:
    async with scratch_mount(bao, "adapt-aws") as m:
        yield m


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


@dataclass
class World:
    moto: Moto
    bao: Bao
    client: VaultClient
    mount: str
    secret: str
    user: str
    key: tuple[str, str] = field(repr=False)
    options: dict[str, Any]

    def service(self) -> VaultService:
        """An application's VaultService: listeners poll every 0.2 s (and each path every
        0.4 s: some tests write around the service, which the change feed does not see)."""
        return VaultService(
            VaultSettings(
                addr=self.bao.addr,
                token=self.bao.token,
                auth_method="token",
                kv_mount=self.mount,
                listener_interval=0.2,
                listener_full_poll_interval=0.4,
            )
        )

    def last_used(self, key_id: str) -> datetime | None:
        r = self.moto.client("iam").get_access_key_last_used(AccessKeyId=key_id)
        when = r["AccessKeyLastUsed"].get("LastUsedDate")
        return when if isinstance(when, datetime) else None

    def config_file(self, tmp: Path, prefix: str) -> Path:
        doc = yaml.safe_load(DEFAULT_YAML.read_text())
        doc["types"] = {"aws": {"secret": self.secret, "grace": "1h", "options": self.options}}
        doc["defaults"]["intervals"] = {"aws": "90d"}
        for env in doc["environments"].values():
            env.pop("intervals", None)
            env["state_prefix"] = prefix
            env["vault"] = {"addr": self.bao.addr, "kv_mount": self.mount, "auth_method": "token"}
            env["lock_ttl"] = "30s"
        path = tmp / f"rotation-{hexid()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest.fixture
async def world(moto: Moto, bao: Bao, client: VaultClient, mount: str) -> World:
    user, akid, secret = moto.user("adapt", SELF_ROTATION_POLICY)
    name = f"credentials-{hexid()}"
    data = {
        "aws": {"aws_access_key": akid, "aws_secret_key": secret, "aws_region": REGION},
        "stripe": {"api_key": "sk_test_" + uuid.uuid4().hex},
    }
    await client.kv.write(KV2Path(mount, name), data, cas=0)
    options = {"endpoint_url": moto.endpoint, "verify_timeout": 10}
    return World(moto, bao, client, mount, name, user, (akid, secret), options)


class Load:
    """``threads`` callers of ``call`` in a loop (blocking boto3 calls on threads of
    their own, not the loop's default executor). Counts successes and failures."""

    def __init__(self, call: Callable[[], Any], threads: int = 4) -> None:
        self.call = call
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: per thread: time.monotonic() at which its last *completed* call started
        self.last_start = [0.0] * threads
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.call()
            except ClientError as exc:
                with self._lock:
                    self.errors.append(str(exc.response.get("Error", {}).get("Code")))
            except Exception as exc:  # counted, reported by type
                with self._lock:
                    self.errors.append(type(exc).__name__)
            else:
                with self._lock:
                    self.ok += 1
            self.last_start[i] = t

    def start(self) -> None:
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            await asyncio.to_thread(t.join)

    async def more(self, n: int) -> None:
        """Until ``n`` more calls succeeded."""
        target = self.ok + n
        await until(lambda: self.ok >= target, what=f"{n} more calls")

    async def all_started_after(self, t: float) -> None:
        """Until every thread has completed a call that started after ``t``: no request
        signed before ``t`` is still in flight."""
        await until(lambda: min(self.last_start) > t, what="every caller past the switch")


async def until(cond: Callable[[], bool], within: float = 30, what: str = "condition") -> None:
    """Poll ``cond`` every 20 ms (the load's threads need the cores); fail after ``within``
    real seconds."""
    deadline = time.monotonic() + within
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0.02)


def mailyctl_rotate() -> list[str]:
    return [sys.executable, str(ROOT / "mailyctl.py"), "secrets", "rotate", "--secret-types=aws"]


def subprocess_env(world: World, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "AWS_"))}
    env.update(
        {"VAULT_TOKEN": world.bao.token, "MAILY_ROTATION_CONFIG": str(config), "COLUMNS": "200"}
    )
    return env


async def test_requests_switch_to_the_new_key_through_rotate_and_retire_without_failures(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    old_id, old_secret = world.key
    prefix = f"rotation-{hexid()}"
    config = world.config_file(tmp_path, prefix)
    svc = world.service()
    session = await adapters.aws_session(svc, secret=world.secret)
    assert isinstance(session, AwsSession) and session.generation == 1
    assert session.access_key_id == old_id and session.region_name == REGION
    sts = session.client("sts", endpoint_url=world.moto.endpoint)
    iam = session.client("iam", endpoint_url=world.moto.endpoint)
    load = Load(sts.get_caller_identity)
    before_rotation = datetime.now(UTC)
    load.start()
    try:
        await load.more(20)
        # 1. `mailyctl secrets rotate --secret-types aws` in a subprocess, under load
        proc = await asyncio.create_subprocess_exec(
            *mailyctl_rotate(),
            env=subprocess_env(world, config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        output = out.decode() + err.decode()
        assert proc.returncode == 0, output
        state, _ = await StateStore(world.client, world.mount, prefix).read("aws")
        assert state is not None and len(state.retiring) == 1
        retiring = state.retiring[0].data
        assert retiring["access_key_id"] == old_id
        current = await world.client.kv.read(KV2Path(world.mount, world.secret))
        new_id = str(current.data["aws"]["aws_access_key"])
        assert new_id != old_id
        # 2. the listener switched the session: the same clients now sign with the new key
        await until(lambda: session.generation == 2, what="the switch")
        assert session.access_key_id == new_id
        switched = session.switched_at[0]
        await load.all_started_after(switched)
        # a client made before the switch signs with the new key too
        assert iam.get_user()["User"]["UserName"] == world.user
        # 3. moto tells: the previous key is no longer used, the new one is
        old_last = world.last_used(old_id)
        new_last = world.last_used(new_id)
        assert old_last is not None and new_last is not None
        await load.more(50)
        assert world.last_used(old_id) == old_last, "a request was signed with the old key"
        later = world.last_used(new_id)
        assert later is not None and later > new_last
        # 4. usage(): the previous key's last use (since before the rotation: our load;
        #    since after the switch drained: idle); the current key is in use
        rot = AwsAccessKeyRotator()
        ctx = rotation_ctx("aws", world.client, world.secret, options=world.options, prefix=prefix)
        seen = await rot.usage(ctx, retiring, since=before_rotation)
        assert seen is not None and seen.previous is not None and seen.current is not None
        assert seen.previous.credential == old_id and seen.previous.idle is False
        (straggler,) = seen.previous.users
        assert straggler.application == "sts" and REGION in straggler.detail
        assert "last used" in straggler.detail and "delay" in seen.previous.note
        drained = datetime.now(UTC)
        await load.more(20)
        quiet = await rot.usage(ctx, retiring, since=drained)
        assert quiet is not None and quiet.previous is not None and quiet.current is not None
        assert quiet.previous.idle is True and "delay" in quiet.previous.note
        assert quiet.current.credential == new_id and quiet.current.idle is False
        assert "1 in use" in quiet.current.describe()
        # 5. retirement at the end of the grace, under load: the old key is deleted
        config_obj = RotationConfig.load(config)
        engine = RotationEngine(
            config_obj,
            "development",
            client=world.client,
            now=lambda: datetime.now(UTC) + timedelta(hours=2),
        )
        res = (await engine.run(["aws"], due_only=True)).results[0]
        assert res.status == "skipped" and "not due" in res.reason, res.reason
        assert world.moto.key_ids(world.user) == {new_id}
        assert world.moto.whoami(world.key) is None, "the retired key must be refused"
        gone = await rot.usage(ctx, retiring, since=drained)
        assert gone is not None and gone.previous is not None and gone.previous.idle is True
        assert "deleted" in gone.previous.note
        await load.more(50)
    finally:
        await load.stop()
        await session.close()
        await svc.close()
    assert load.errors == [], f"failed requests: {sorted(set(load.errors))}"
    assert load.ok >= 150
    stats = session.stats()
    assert stats["generation"] == 2 and stats["signed_per_generation"][2] > 100
    assert stats["signed_per_generation"][1] > 0
    new_secret = (await world.client.kv.read(KV2Path(world.mount, world.secret))).data["aws"][
        "aws_secret_key"
    ]
    text = "\n".join(
        [repr(session), repr(session.credentials), repr(session.feed), str(stats), output]
    )
    for s in (old_secret, new_secret):
        assert_absent(s, text, "a repr, the stats or the CLI output")
        assert_absent(s, all_log_text(caplog), "the logs")


async def test_an_unusable_new_version_keeps_the_key_in_use(world: World) -> None:
    svc = world.service()
    session = await adapters.aws_session(svc, secret=world.secret)
    try:
        sts = session.client("sts", endpoint_url=world.moto.endpoint)
        path = KV2Path(world.mount, world.secret)
        cur = await world.client.kv.read(path)
        half = {**cur.data, "aws": {"aws_access_key": "AKIAHALFWRITTEN00000"}}  # no secret
        await world.client.kv.write(path, half, cas=cur.version)
        version = cur.version + 1

        def seen() -> bool:
            entry = svc.cache.peek(path.data)
            return entry is not None and entry.version == version

        await until(seen)  # the listener read the new version (the cache is updated first)
        assert session.generation == 1 and session.access_key_id == world.key[0]
        assert sts.get_caller_identity()["Arn"].endswith(f"user/{world.user}")
    finally:
        await session.close()
        await svc.close()


async def test_no_usable_key_at_start_is_an_error(world: World) -> None:
    svc = world.service()
    try:
        path = KV2Path(world.mount, f"credentials-{hexid()}")
        await world.client.kv.write(path, {"aws": {"aws_region": REGION}}, cas=0)
        with pytest.raises(ValueError, match="aws_access_key"):
            await adapters.aws_session(svc, secret=path.name)
    finally:
        await svc.close()


async def test_a_key_retired_before_the_listener_noticed_is_retried_with_the_key_in_vault(
    world: World,
) -> None:
    """The listener has not reported the promote (interval of an hour here) and the
    previous key is already deleted: the refused request (InvalidClientTokenId) re-reads
    the secret and is retried once, at once, with the new key; no call fails."""
    from .kit.rotation import rotate

    svc = VaultService(
        VaultSettings(
            addr=world.bao.addr,
            token=world.bao.token,
            auth_method="token",
            kv_mount=world.mount,
            listener_interval=3600,
        )
    )
    session = await adapters.aws_session(svc, secret=world.secret)
    try:
        sts = session.client("sts", endpoint_url=world.moto.endpoint)
        assert (await asyncio.to_thread(sts.get_caller_identity))["Arn"].endswith(world.user)
        rot = AwsAccessKeyRotator()
        ctx = rotation_ctx("aws", world.client, world.secret, options=world.options)
        pending, _ = await rotate(rot, ctx)
        retiring = rot.retiring(ctx, pending)
        assert retiring is not None
        await rot.retire(ctx, retiring)
        assert world.moto.whoami(world.key) is None  # the session's key is refused now
        assert session.generation == 1
        arn = (await asyncio.to_thread(sts.get_caller_identity))["Arn"]
        assert arn.endswith(f"user/{world.user}")
        assert session.generation == 2 and session.access_key_id == pending["access_key_id"]
        stats = session.stats()
        assert stats["refreshes"] == 1 and stats["signed_per_generation"] == {1: 2, 2: 1}
        # a key refused with nothing newer in Vault: the error stands (no retry loop)
        iam = world.moto.client("iam")
        await asyncio.to_thread(
            iam.delete_access_key, UserName=world.user, AccessKeyId=pending["access_key_id"]
        )
        with pytest.raises(ClientError) as exc:
            await asyncio.to_thread(sts.get_caller_identity)
        assert exc.value.response["Error"]["Code"] == "InvalidClientTokenId"
        assert session.generation == 2 and session.stats()["refreshes"] <= 2
    finally:
        await session.close()
        await svc.close()
