"""``adapters.redis_client`` through a real rotation: real Redis (127.0.0.1:6379), real
OpenBao, the real ``redis`` rotator with two alternating ACL users, ``mailyctl secrets
rotate`` as a subprocess, retirement by an in-process engine whose clock is past the grace.

Every test has ACL users, keys (``maily:t:<hex>:*``), a consumer secret and a state prefix
of its own; the users are deleted afterwards. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from pydantic import SecretStr
from redis.exceptions import AuthenticationError, RedisError

from maily_secrets import adapters
from maily_secrets.adapters.redis import (
    FollowingPool,
    RedisCredential,
    RotatingRedis,
    pick_redis_credential,
)
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.redis import RedisAclRotator
from maily_secrets.service import VaultService
from maily_secrets.targets import random_password
from maily_secrets.targets.redis import client_list, ensure_redis_acl_user
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.rotation import rotation_ctx
from .secrecy import assert_absent
from .ticker import Ticker

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def uid() -> str:
    return uuid.uuid4().hex[:10]


def _redis(**kw: Any) -> aioredis.Redis:
    return aioredis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=3, socket_timeout=10, **kw
    )


async def can_login(user: str, password: str) -> bool:
    conn = _redis(username=user, password=password, single_connection_client=True)
    try:
        await conn.ping()
        return True
    except AuthenticationError:
        return False
    finally:
        await conn.aclose()


async def names_of(admin: aioredis.Redis, user: str) -> list[str]:
    """Client names of the connections authenticated as ``user``."""
    return sorted(c.name for c in await client_list(admin) if c.user == user)


async def no_connections_of(admin: aioredis.Redis, user: str, within: float = 30.0) -> None:
    """Until the server lists no connection of ``user``: a client's close reaches Redis as
    an end of stream that the server handles on its next event loop turn, not at once."""
    async with asyncio.timeout(within):
        while await names_of(admin, user):  # noqa: ASYNC110 - the server has no event to await
            await asyncio.sleep(0.01)


async def eventually(done: Callable[[], bool], within: float = 30.0) -> None:
    """Until ``done()`` (a background listener or task gets there), at most ``within`` s."""
    async with asyncio.timeout(within):
        while not done():  # noqa: ASYNC110 - the pool and the listener have no event to await
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
async def mount(bao: Bao) -> str:
    return await bao.new_kv_mount("ra")


@pytest.fixture
async def vault(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    conn = _redis()
    try:
        await conn.ping()
    except RedisError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (run scripts/ensure-services.sh)")
    yield conn
    await conn.aclose()


@dataclass
class App:
    """A consumer secret whose app logs in as one of two ACL users of this test."""

    vault: VaultClient
    users: tuple[str, str]
    password: str = field(repr=False)
    secret: str
    admin_secret: str
    keys: str  # key prefix of this test

    @property
    def path(self) -> KV2Path:
        return KV2Path(self.vault.settings.kv_mount, self.secret)

    async def consumer(self) -> dict[str, Any]:
        return (await self.vault.kv.read(self.path)).data

    def config(self, tmp_path: Path, prefix: str) -> Path:
        doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
        doc["types"]["redis"] = {
            "secret": self.secret,
            "grace": "1h",
            "options": {"acl_users": list(self.users), "admin_secret": self.admin_secret},
        }
        env = doc["environments"]["development"]
        env["state_prefix"] = prefix
        env["vault"] = {"kv_mount": self.vault.settings.kv_mount}
        path = tmp_path / f"rotation-{prefix}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest.fixture
async def app(vault: VaultClient, admin: aioredis.Redis) -> AsyncIterator[App]:
    name = uid()
    users = (f"maily_ta_{name}", f"maily_ta_{name}_b")
    a = App(
        vault,
        users,
        random_password(),
        f"config-{name}",
        f"rotator/redis-admin-{name}",
        f"maily:t:{name}",
    )
    try:
        assert await ensure_redis_acl_user(admin, users[0], password=a.password)
        assert await ensure_redis_acl_user(admin, users[1])
        await vault.kv.write(
            a.path,
            {
                "redis_host": REDIS_HOST,
                "redis_port": REDIS_PORT,
                "redis_username": users[0],
                "redis_password": a.password,
            },
            cas=0,
        )
        await vault.kv.write(
            KV2Path(vault.settings.kv_mount, a.admin_secret),
            {"host": REDIS_HOST, "port": REDIS_PORT},
            cas=0,
        )
        yield a
    finally:
        keys = [k async for k in admin.scan_iter(match=f"{a.keys}:*")]
        if keys:
            await admin.delete(*keys)
        await admin.execute_command("ACL", "DELUSER", *users)  # type: ignore[no-untyped-call]


@pytest.fixture
async def service(bao: Bao, mount: str) -> AsyncIterator[VaultService]:
    # writes around the service (vault.kv.write) are seen by each path's own poll
    svc = VaultService(
        bao.settings(kv_mount=mount, listener_interval=0.05, listener_full_poll_interval=0.1)
    )
    yield svc
    await svc.close()


class Load:
    """``workers`` tasks sending SET/GET/INCR through the client without pause."""

    def __init__(self, client: aioredis.Redis, keys: str, workers: int = 8) -> None:
        self.client, self.keys, self.workers = client, keys, workers
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.ticker = Ticker()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if n % 3 == 0:
                    await self.client.incr(f"{self.keys}:count")
                elif n % 3 == 1:
                    await self.client.set(f"{self.keys}:{i}", n)
                else:
                    assert await self.client.get(f"{self.keys}:{i}") is not None
                self.ok += 1
            except (RedisError, OSError, AssertionError) as exc:
                self.failed += 1
                self.errors.append(type(exc).__name__)
            self.ticker.tick()
            await asyncio.sleep(0)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(self.workers)]

    async def until(self, done: Callable[[], bool], within: float = 60.0) -> None:
        await self.ticker.until(done, within)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def rotate_env(bao: Bao, config: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "MAILY_"))},
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "VAULT_AUTH_METHOD": "token",
        "MAILY_ROTATION_CONFIG": str(config),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }


# ---------------------------------------------------------------------------- tests
async def test_load_through_rotation_and_retirement_has_no_failed_operations(
    bao: Bao,
    app: App,
    service: VaultService,
    admin: aioredis.Redis,
    tmp_path: Path,
) -> None:
    a, b = app.users
    cfg_path = app.config(tmp_path, f"rot-{uid()}")
    name = f"maily-test-{uid()}"
    client = await adapters.redis_client(
        service, secret=app.secret, client_name=name, max_connections=16
    )
    load = Load(client, app.keys)
    load.start()
    try:
        await load.until(lambda: load.ok >= 200)
        assert client.stats().connected.get(1, 0) > 0
        assert await names_of(admin, a) and set(await names_of(admin, a)) == {name}

        # `mailyctl secrets rotate --secret-types redis` while the load runs
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "mailyctl.py"),
            "secrets",
            "rotate",
            "--secret-types",
            "redis",
            "--json",
            env=rotate_env(bao, cfg_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        (res,) = json.loads(out)["results"]
        assert res["status"] == "rotated", res
        data = await app.consumer()
        assert data["redis_username"] == b
        assert_absent(data["redis_password"], out.decode() + err.decode(), "mailyctl's output")
        during = load.ok

        # the adapter picks it up (listener), and drains the old connections
        await load.until(lambda: client.generation == 2 and client.stats().old_connections == 0)
        ops_at_switch = load.ok
        await load.until(lambda: load.ok >= ops_at_switch + 200)  # traffic on the new user
        stats = client.stats()
        assert stats.generation == 2 and stats.opened.get(2, 0) > 0
        assert sum(stats.drained.values()) > 0  # old connections were closed, not leaked
        await no_connections_of(admin, a)
        assert set(await names_of(admin, b)) == {name}

        # the rotator sees it too: the previous user is idle, the app uses the new one
        rot = RedisAclRotator()
        ctx = rotation_ctx(
            "redis",
            app.vault,
            app.secret,
            options={"acl_users": list(app.users), "admin_secret": app.admin_secret},
        )
        adoption = await rot.usage(ctx, {"user": a, "mode": "acl_users"})
        assert adoption is not None and adoption.previous and adoption.current
        assert adoption.previous.idle is True
        assert {u.application for u in adoption.current.users} == {name}

        # retirement: an engine whose clock is past the grace (rotation not due: skipped)
        later = datetime.now(UTC) + timedelta(hours=2)
        engine = RotationEngine(
            RotationConfig.load(cfg_path), "development", client=app.vault, now=lambda: later
        )
        report = await engine.run(["redis"], due_only=True)
        (res2,) = report.results
        assert res2.status == "skipped", res2.reason
        assert any(f"retired previous ACL user {a}" in n for n in res2.notes), res2.notes
        retired_at = load.ok
        await load.until(lambda: load.ok >= retired_at + 200)  # and on after retirement
    finally:
        await load.stop()
        await client.aclose()
    assert load.failed == 0, load.errors[:20]
    assert during > 0 and load.ok > during
    await no_connections_of(admin, a)
    assert not await can_login(a, app.password)  # the previous user no longer logs in
    assert await can_login(b, (await app.consumer())["redis_password"])
    await no_connections_of(admin, b)  # aclose() closed every connection


async def test_a_command_in_flight_finishes_on_its_old_connection_then_it_closes(
    app: App, service: VaultService, admin: aioredis.Redis
) -> None:
    a, b = app.users
    client = await adapters.redis_client(service, secret=app.secret, client_name="inflight")
    try:
        queue = f"{app.keys}:queue"
        blocked = asyncio.create_task(client.blpop([queue], timeout=0))  # holds a connection
        await eventually(lambda: client.stats().in_use == 1)
        rot = RedisAclRotator()
        ctx = rotation_ctx(
            "redis",
            app.vault,
            app.secret,
            options={"acl_users": list(app.users), "admin_secret": app.admin_secret},
        )
        await rot.check(ctx)
        pending = await rot.create_pending(ctx)
        await rot.apply(ctx, pending)
        await rot.verify(ctx, pending)
        await rot.promote(ctx, pending)
        await eventually(lambda: client.generation == 2)

        # the blocked command still holds its generation-1 connection, as user a
        assert client.stats().connected == {1: 1}
        assert await names_of(admin, a) == ["inflight"]
        await client.lpush(queue, "job")  # a new connection, as b
        assert client.stats().connected.get(2) == 1
        assert await asyncio.wait_for(blocked, 10) == (queue.encode(), b"job")
        # released: the old connection was closed, not put back
        stats = client.stats()
        assert stats.old_connections == 0 and stats.drained == {1: 1}
        await no_connections_of(admin, a)
        assert await names_of(admin, b) == ["inflight"]
    finally:
        await client.aclose()


async def test_an_unusable_new_version_keeps_the_current_credential(
    app: App, service: VaultService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "maily_secrets.adapters")
    client = await adapters.redis_client(service, secret=app.secret)
    try:
        await client.set(f"{app.keys}:x", "1")
        await app.vault.kv.update(
            app.path, lambda d: {k: v for k, v in d.items() if k != "redis_password"}
        )
        await eventually(lambda: "not usable" in caplog.text)  # the listener saw it
        assert "redis_password is missing" in caplog.text
        assert_absent(app.password, caplog.text, "the log")
        assert client.generation == 1
        assert await client.get(f"{app.keys}:x") == b"1"
    finally:
        await client.aclose()


async def test_close_unsubscribes_and_closes_the_connections(
    app: App, service: VaultService, admin: aioredis.Redis
) -> None:
    client = await adapters.redis_client(service, secret=app.secret, client_name="closing")
    await client.ping()
    assert await names_of(admin, app.users[0]) == ["closing"]
    feed = client.feed
    await client.aclose()
    await no_connections_of(admin, app.users[0])
    assert await service.unregister_secret_listener(feed.path, feed._changed) is False


async def test_credentials_come_from_the_secret_only(service: VaultService, app: App) -> None:
    with pytest.raises(TypeError, match="password"):
        await adapters.redis_client(service, secret=app.secret, password="x")
    with pytest.raises(ValueError, match="redis_password"):
        pick_redis_credential({"redis_host": "h"})
    with pytest.raises(ValueError, match="redis_port"):
        pick_redis_credential({"redis_host": "h", "redis_password": "p", "redis_port": "x"})


async def test_no_password_in_repr(app: App, service: VaultService) -> None:
    client = await adapters.redis_client(service, secret=app.secret)
    try:
        await client.ping()
        pool = client.connection_pool
        assert isinstance(client, RotatingRedis) and isinstance(pool, FollowingPool)
        conns = [*pool._available_connections, *pool._in_use_connections]
        shown = " ".join(
            repr(x)
            for x in (client, pool, client.feed, client.feed.current, client.stats(), *conns)
        )
        shown += " ".join(repr(getattr(c, "credential_provider", None)) for c in conns)
        assert_absent(app.password, shown, "repr")
        canary = random_password()
        assert_absent(canary, repr(RedisCredential("h", 1, "u", SecretStr(canary))), "repr")
    finally:
        await client.aclose()
