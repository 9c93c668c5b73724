"""Redis ACL password rotation against the real Redis (127.0.0.1:6379) and OpenBao: one
ACL user with two passwords (``acl_user``), and two alternating users (``acl_users``).

Each test uses ACL users of its own (deleted at teardown), a consumer secret of
its own in a KV v2 mount of this module, and, through the engine, a state prefix
of its own. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from maily_secrets.paths import KV2Path
from maily_secrets.rotation import rotators as _rotators  # noqa: F401 - registers them
from maily_secrets.rotation.base import (
    RotationContext,
    RotationError,
    RotatorConfigError,
    rotator_for,
)
from maily_secrets.rotation.config import RotationConfig, TypeConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.redis import RedisAclRotator, RedisOptions
from maily_secrets.targets import random_password
from maily_secrets.targets.redis import (
    client_list,
    ensure_redis_acl_user,
    get_acl_user,
    password_sha256,
)
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.rotation import crash_engine_run, rotation_ctx, scratch_mount
from .secrecy import assert_absent
from .ticker import Ticker

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"


def uid() -> str:
    return uuid.uuid4().hex[:10]


def _redis(**kw: Any) -> aioredis.Redis:
    return aioredis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=3, socket_timeout=10, **kw
    )


async def _cmd(conn: aioredis.Redis, *args: Any) -> Any:
    return await conn.execute_command(*args)


def _text(value: Any) -> str:
    """Any Redis answer (bytes, lists, dicts, nested) as one string to search in."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return " ".join(f"{_text(k)} {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return " ".join(_text(v) for v in value)
    return str(value)


async def can_login(user: str, password: str) -> bool:
    conn = _redis(username=user, password=password, single_connection_client=True)
    try:
        await conn.ping()
        return True
    except AuthenticationError:
        return False
    finally:
        await conn.aclose()


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
async def mount(bao: Bao) -> str:
    return await bao.new_kv_mount("rr")


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


@pytest.fixture
async def acl_user(admin: aioredis.Redis) -> AsyncIterator[str]:
    user = f"maily_t_{uid()}"
    yield user
    await _cmd(admin, "ACL", "DELUSER", user)


class Setup:
    """One test's consumer secret, admin secret and ACL user holding ``password``."""

    def __init__(self, vault: VaultClient, user: str, password: str, name: str) -> None:
        self.vault = vault
        self.user = user
        self.password = password
        self.secret = f"config-{name}"
        self.admin_secret = f"rotator/redis-admin-{name}"

    @property
    def options(self) -> dict[str, Any]:
        return {"acl_user": self.user, "admin_secret": self.admin_secret}

    def ctx(
        self,
        options: dict[str, Any] | None = None,
        grace: timedelta = timedelta(hours=1),
        rotation_id: str | None = None,
    ) -> RotationContext:
        return rotation_ctx(
            "redis",
            self.vault,
            self.secret,
            options=self.options if options is None else options,
            grace=grace,
            config=DEFAULT_CONFIG,
            rotation_id=rotation_id,
            logger="maily_secrets.rotation",
        )

    async def consumer(self) -> dict[str, Any]:
        return (await self.vault.kv.read(KV2Path(self.vault.settings.kv_mount, self.secret))).data

    async def consumer_version(self) -> int:
        return await self.vault.kv.current_version(
            KV2Path(self.vault.settings.kv_mount, self.secret)
        )


@pytest.fixture
async def setup(vault: VaultClient, admin: aioredis.Redis, acl_user: str) -> Setup:
    s = Setup(vault, acl_user, random_password(), uid())
    assert await ensure_redis_acl_user(admin, acl_user, password=s.password) is True
    mount = vault.settings.kv_mount
    await vault.kv.write(
        KV2Path(mount, s.secret),
        {
            "redis_host": REDIS_HOST,
            "redis_port": REDIS_PORT,
            "redis_username": acl_user,
            "redis_password": s.password,
            "db_password": "other-type-keeps-this",
        },
        cas=0,
    )
    await vault.kv.write(
        KV2Path(mount, s.admin_secret), {"host": REDIS_HOST, "port": REDIS_PORT}, cas=0
    )
    return s


async def hashes(admin: aioredis.Redis, user: str) -> frozenset[str]:
    u = await get_acl_user(admin, user)
    assert u is not None
    return u.password_hashes


def write_config(tmp_path: Path, s: Setup, prefix: str, lock_ttl: str = "5m") -> Path:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["types"]["redis"] = {"secret": s.secret, "grace": "1h", "options": s.options}
    doc["environments"]["development"]["state_prefix"] = prefix
    doc["environments"]["development"]["lock_ttl"] = lock_ttl
    doc["environments"]["development"]["vault"] = {"kv_mount": s.vault.settings.kv_mount}
    path = tmp_path / f"rotation-{prefix}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------------------- tests
async def test_registered_as_redis_two_slots() -> None:
    r = rotator_for("redis")
    assert isinstance(r, RedisAclRotator)
    assert RedisAclRotator.two_slots is True


async def test_ensure_acl_user_is_idempotent_and_limits_the_app(
    admin: aioredis.Redis, acl_user: str
) -> None:
    password = random_password()
    assert await ensure_redis_acl_user(admin, acl_user, password=password) is True
    assert await ensure_redis_acl_user(admin, acl_user, password=password) is False
    u = await get_acl_user(admin, acl_user)
    assert u is not None and u.enabled and not u.nopass
    assert u.password_hashes == {password_sha256(password)}
    app = _redis(username=acl_user, password=password, single_connection_client=True)
    try:
        await app.set("maily:probe", "1", ex=5)
        with pytest.raises(NoPermissionError):
            await app.set("other:probe", "1", ex=5)  # outside ~maily:*
        with pytest.raises(NoPermissionError):
            await app.flushall()  # @dangerous
    finally:
        await app.aclose()
    with pytest.raises(ValueError):
        await ensure_redis_acl_user(admin, "default")


async def test_one_rotation_step_by_step(setup: Setup, admin: aioredis.Redis) -> None:
    s, rot = setup, RedisAclRotator()
    ctx = s.ctx()
    old_hash = password_sha256(s.password)
    await rot.check(ctx)
    assert "ACL user" in await rot.describe(ctx)

    pending = await rot.create_pending(ctx)
    new = pending["password"]
    assert new != s.password and pending["password_sha256"] == password_sha256(new)
    assert await hashes(admin, s.user) == {old_hash}  # create_pending changes nothing

    await rot.apply(ctx, pending)
    await rot.apply(ctx, pending)  # idempotent
    assert await hashes(admin, s.user) == {old_hash, password_sha256(new)}
    # Redis holds hashes only: neither plaintext is in what it reports
    shown = _text(await _cmd(admin, "ACL", "GETUSER", s.user)) + _text(
        await _cmd(admin, "ACL", "LIST")
    )
    assert_absent(new, shown, "ACL GETUSER/LIST")
    assert_absent(s.password, shown, "ACL GETUSER/LIST")
    assert await can_login(s.user, s.password) and await can_login(s.user, new)

    await rot.verify(ctx, pending)
    before = await s.consumer_version()
    version = await rot.promote(ctx, pending)
    assert version == before + 1
    assert await rot.promote(ctx, pending) == version  # idempotent: no second version
    data = await s.consumer()
    assert data["redis_password"] == new and data["redis_username"] == s.user
    assert data["db_password"] == "other-type-keeps-this"  # other keys are kept

    # grace period: the previous password still works
    retiring = rot.retiring(ctx, pending)
    assert retiring == {"user": s.user, "password_sha256": old_hash}
    assert await can_login(s.user, s.password)

    await rot.retire(ctx, retiring)
    await rot.retire(ctx, retiring)  # idempotent
    assert await hashes(admin, s.user) == {password_sha256(new)}
    assert not await can_login(s.user, s.password)
    assert await can_login(s.user, new)


async def test_without_admin_secret_the_default_user_of_the_consumer_endpoint(
    setup: Setup, admin: aioredis.Redis
) -> None:
    """No admin_secret: redis_host/redis_port of the consumer secret, default user."""
    s, rot = setup, RedisAclRotator()
    ctx = s.ctx({"acl_user": s.user})
    pending = await run_all(rot, ctx)
    assert await can_login(s.user, pending["password"]) and await can_login(s.user, s.password)
    assert (await s.consumer())["redis_password"] == pending["password"]


async def run_all(rot: RedisAclRotator, ctx: RotationContext) -> dict[str, Any]:
    await rot.check(ctx)
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)
    await rot.promote(ctx, pending)
    return pending


async def test_retire_never_removes_the_password_in_use(
    setup: Setup, admin: aioredis.Redis
) -> None:
    rot = RedisAclRotator()
    ctx = setup.ctx()
    await rot.retire(ctx, {"user": setup.user, "password_sha256": password_sha256(setup.password)})
    assert await can_login(setup.user, setup.password)


async def test_retire_without_the_password_in_use_removes_nothing(
    setup: Setup, admin: aioredis.Redis
) -> None:
    """A consumer secret that lost redis_password: retire cannot tell which password is in
    use, so it removes none (fail closed) and says why."""
    rot = RedisAclRotator()
    ctx = setup.ctx()
    pending = await run_all(rot, ctx)
    retiring = rot.retiring(ctx, pending)
    assert retiring is not None
    path = KV2Path(setup.vault.settings.kv_mount, setup.secret)
    await setup.vault.kv.update(
        path, lambda d: {k: v for k, v in d.items() if k != "redis_password"}
    )
    before = await hashes(admin, setup.user)
    with pytest.raises(RotationError, match="not removing any password"):
        await rot.retire(ctx, retiring)
    assert await hashes(admin, setup.user) == before
    assert await can_login(setup.user, setup.password)  # the previous one still works


async def test_failed_verification_rolls_back(setup: Setup, admin: aioredis.Redis) -> None:
    s, rot = setup, RedisAclRotator()
    ctx = s.ctx()
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    # the ACL change is lost (e.g. a Redis restart without a saved ACL) before verify
    await _cmd(admin, "ACL", "SETUSER", s.user, f"!{pending['password_sha256']}")
    with pytest.raises(RotationError) as err:
        await rot.verify(ctx, pending)
    assert_absent(pending["password"], str(err.value), "the error")
    assert "verify" in str(err.value) and s.user in str(err.value)
    await rot.apply(ctx, pending)  # back again, then a rollback removes it
    await rot.rollback(ctx, pending)
    assert await hashes(admin, s.user) == {password_sha256(s.password)}
    assert (await s.consumer())["redis_password"] == s.password
    # once promoted, a rollback refuses to remove the password in use
    await rot.apply(ctx, pending)
    await rot.promote(ctx, pending)
    with pytest.raises(RotationError, match="refusing"):
        await rot.rollback(ctx, pending)
    assert await can_login(s.user, pending["password"])


async def test_promote_is_check_and_set(setup: Setup) -> None:
    s, rot = setup, RedisAclRotator()
    ctx = s.ctx()
    path = KV2Path(s.vault.settings.kv_mount, s.secret)
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)

    async def other_writer(i: int) -> None:
        def add(cur: dict[str, Any]) -> dict[str, Any]:
            cur[f"other_{i}"] = i
            return cur

        await s.vault.kv.update(path, add, attempts=50)

    await asyncio.gather(rot.promote(ctx, pending), *(other_writer(i) for i in range(8)))
    data = await s.consumer()
    assert data["redis_password"] == pending["password"]
    assert all(data[f"other_{i}"] == i for i in range(8))  # no lost update

    # a second pending credential made before that promotion is stale now
    stale = {**pending, "password": random_password(), "previous_sha256": password_sha256("x")}
    stale["password_sha256"] = password_sha256(stale["password"])
    before = await s.consumer_version()
    with pytest.raises(RotationError, match="stale"):
        await rot.promote(ctx, stale)
    assert await s.consumer_version() == before


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("no_user", "does not exist"),
        ("no_admin_secret", "admin secret"),
        ("bad_option", "password_length"),
        ("unknown_option", "unknown option"),
        ("default_user", "must not be 'default'"),
        ("no_username", "redis_username"),
        ("bad_admin_login", "cannot connect"),
        ("no_consumer", "consumer secret"),
        ("nopass_user", "nopass"),
        ("disabled_user", "disabled"),
    ],
)
async def test_bad_configuration_is_a_clear_error_and_changes_nothing(
    setup: Setup, admin: aioredis.Redis, case: str, expect: str
) -> None:
    s, rot = setup, RedisAclRotator()
    mount = s.vault.settings.kv_mount
    options: dict[str, Any] = dict(s.options)
    secret_for_ctx: str | None = None
    wrong_password = random_password()
    if case == "no_user":
        options["acl_user"] = missing = f"missing_{uid()}"

        def rename(cur: dict[str, Any]) -> dict[str, Any]:
            cur["redis_username"] = missing
            return cur

        await s.vault.kv.update(KV2Path(mount, s.secret), rename)
    elif case == "no_admin_secret":
        options["admin_secret"] = f"rotator/nothing-{uid()}"
    elif case == "bad_option":
        options["password_length"] = 3
    elif case == "unknown_option":
        options["acl_usr"] = "typo"
    elif case == "default_user":
        options["acl_user"] = "default"
    elif case == "no_username":

        def drop(cur: dict[str, Any]) -> dict[str, Any]:
            cur.pop("redis_username")
            return cur

        await s.vault.kv.update(KV2Path(mount, s.secret), drop)
    elif case == "bad_admin_login":
        name = f"rotator/bad-admin-{uid()}"
        await s.vault.kv.write(
            KV2Path(mount, name),
            {
                "host": REDIS_HOST,
                "port": REDIS_PORT,
                "username": "nobody",
                "password": wrong_password,
            },
            cas=0,
        )
        options["admin_secret"] = name
    elif case == "no_consumer":
        secret_for_ctx = f"missing-{uid()}"
    elif case == "nopass_user":
        await _cmd(admin, "ACL", "SETUSER", s.user, "nopass")
    elif case == "disabled_user":
        await _cmd(admin, "ACL", "SETUSER", s.user, "off")
    ctx = s.ctx(options)
    if secret_for_ctx:
        ctx.type_config = TypeConfig(secret=secret_for_ctx, grace=ctx.grace, options=options)
    before_hashes = await hashes(admin, s.user)
    before_version = await s.consumer_version()
    with pytest.raises(RotatorConfigError) as err:
        await rot.check(ctx)
    assert expect in str(err.value)
    assert_absent(wrong_password, str(err.value), "the error")
    assert_absent(s.password, str(err.value), "the error")
    assert await hashes(admin, s.user) == before_hashes
    assert await s.consumer_version() == before_version
    # describe (dry run) says it cannot, without raising
    if case in ("bad_option", "unknown_option", "default_user"):
        assert (await rot.describe(ctx)).startswith("cannot rotate redis")


async def test_bad_configuration_through_the_engine(
    setup: Setup, admin: aioredis.Redis, tmp_path: Path
) -> None:
    s = setup
    cfg_path = write_config(tmp_path, s, f"rot-{uid()}")
    doc = yaml.safe_load(cfg_path.read_text())
    doc["types"]["redis"]["options"]["acl_user"] = f"missing_{uid()}"
    cfg_path.write_text(yaml.safe_dump(doc))
    engine = RotationEngine(RotationConfig.load(cfg_path), "development", client=s.vault)
    before = await s.consumer_version()
    report = await engine.run(["redis"], force=True)
    (res,) = report.results
    assert res.status == "failed" and "ensure_redis_acl_user" in res.reason
    assert await s.consumer_version() == before
    assert await hashes(admin, s.user) == {password_sha256(s.password)}


async def test_rotation_while_in_use_has_no_auth_failures(
    setup: Setup, admin: aioredis.Redis, tmp_path: Path
) -> None:
    """Clients connecting all the time with whatever Vault holds never fail to log in."""
    s = setup
    cfg = RotationConfig.load(write_config(tmp_path, s, f"rot-{uid()}"))
    stop = asyncio.Event()
    ok = failures = 0
    errors: list[str] = []

    async def client_loop() -> None:
        nonlocal ok, failures
        while not stop.is_set():
            data = await s.consumer()
            conn = _redis(
                username=data["redis_username"],
                password=data["redis_password"],
                single_connection_client=True,
            )
            try:
                await conn.ping()
                ok += 1
                ticker.tick()
            except RedisError as exc:
                failures += 1
                errors.append(type(exc).__name__)
            finally:
                await conn.aclose()

    ticker = Ticker()
    loops = [asyncio.create_task(client_loop()) for _ in range(4)]
    seen = [s.password]
    try:
        await ticker.rounds(8)  # clients log in before the first rotation...
        for _ in range(3):
            engine = RotationEngine(cfg, "development", client=s.vault)
            report = await engine.run(["redis"], force=True)
            assert [r.status for r in report.results] == ["rotated"], report.results[0].reason
            seen.append((await s.consumer())["redis_password"])
            await ticker.rounds(8)  # ...and with each new password
    finally:
        stop.set()
        await asyncio.gather(*loops)
    assert failures == 0, errors
    assert ok > 20
    assert len(set(seen)) == 4
    # within the grace period every password of the last hour still works
    for p in seen:
        assert await can_login(s.user, p)

    # two hours later: the previous passwords are retired, the one in use stays
    later = datetime.now(UTC) + timedelta(hours=2)
    engine = RotationEngine(cfg, "development", client=s.vault, now=lambda: later)
    report = await engine.run(["redis"], due_only=True)
    assert report.results[0].status == "skipped"  # not due; retiring happened first
    for p in seen[:-1]:
        assert not await can_login(s.user, p)
    assert await can_login(s.user, seen[-1])
    assert await hashes(admin, s.user) == {password_sha256(seen[-1])}


async def test_grace_gate_without_force(setup: Setup, tmp_path: Path) -> None:
    cfg = RotationConfig.load(write_config(tmp_path, setup, f"rot-{uid()}"))
    engine = RotationEngine(cfg, "development", client=setup.vault)
    first = await engine.run(["redis"])
    assert first.results[0].status == "rotated"
    second = await engine.run(["redis"])
    assert second.results[0].status == "skipped" and "grace" in second.results[0].reason


@pytest.mark.parametrize("step", ["created", "applied", "verified", "promoted"])
async def test_crash_after_each_step_then_resume(
    bao: Bao, setup: Setup, admin: aioredis.Redis, tmp_path: Path, step: str
) -> None:
    s = setup
    prefix = f"rot-{uid()}"
    cfg_path = write_config(tmp_path, s, prefix)
    proc = crash_engine_run(bao, cfg_path, "redis", step)
    assert proc.returncode == 70, proc.stderr[-2000:]
    assert_absent(s.password, proc.stdout + proc.stderr, "the child's output")

    state = (await s.vault.kv.read(KV2Path(s.vault.settings.kv_mount, f"{prefix}/redis"))).data
    assert state["outcome"] == "in_progress" and state["step"] == step
    new = state["pending"]["password"]
    # whatever the step, the password in Vault works (the old one until promoted)
    current = (await s.consumer())["redis_password"]
    assert current == (new if step == "promoted" else s.password)
    assert await can_login(s.user, current)

    engine = RotationEngine(RotationConfig.load(cfg_path), "development", client=s.vault)
    report = await engine.run(["redis"])  # resumes (no force needed)
    (res,) = report.results
    assert res.status == "resumed", res.reason
    data = await s.consumer()
    assert data["redis_password"] == new  # the same rotation finished, not a new one
    assert await hashes(admin, s.user) == {password_sha256(s.password), password_sha256(new)}
    assert await can_login(s.user, new) and await can_login(s.user, s.password)


async def test_plaintext_never_reaches_redis_logs(
    setup: Setup, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """MONITOR, SLOWLOG, ACL LOG, ACL LIST and our own log show no password."""
    s, rot = setup, RedisAclRotator()
    ctx = s.ctx()
    slower = await admin.config_get("slowlog-log-slower-than")
    monitor_lines: list[str] = []
    monitoring = asyncio.Event()
    seen = Ticker()

    async def monitor() -> None:
        conn = _redis(single_connection_client=True)
        try:
            async with conn.monitor() as m:
                monitoring.set()
                while True:  # until cancelled
                    cmd = await m.next_command()
                    monitor_lines.append(str(cmd.get("command", "")))
                    seen.tick()
        finally:
            await conn.aclose()

    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(monitor())
    await asyncio.wait_for(monitoring.wait(), 5)
    await admin.config_set("slowlog-log-slower-than", 0)
    try:
        await rot.check(ctx)
        pending = await rot.create_pending(ctx)
        await rot.apply(ctx, pending)
        await rot.verify(ctx, pending)
        await rot.promote(ctx, pending)
        retiring = rot.retiring(ctx, pending)
        assert retiring is not None
        await rot.retire(ctx, retiring)
        # a failing verification (wrong password) leaves an ACL LOG entry
        bad = {**pending, "password": random_password()}
        with pytest.raises(RotationError):
            await rot.verify(ctx, bad)
        # MONITOR has seen the verifications' PINGs (it lags the commands a little)
        await seen.until(lambda: any("PING" in ln.upper() for ln in monitor_lines))
    finally:
        await admin.config_set("slowlog-log-slower-than", slower["slowlog-log-slower-than"])
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RedisError):
            await task
    # MONITOR works (Redis 7 shows no ACL/AUTH/HELLO command there at all)
    assert any("PING" in line.upper() for line in monitor_lines), monitor_lines[:20]
    slowlog = _text(await _cmd(admin, "SLOWLOG", "GET", "-1"))
    acl_log = _text(await _cmd(admin, "ACL", "LOG"))
    acl_list = _text(await _cmd(admin, "ACL", "LIST"))
    assert s.user in acl_log  # the failed login is logged, by user name
    for password in (s.password, pending["password"], bad["password"]):
        assert_absent(password, "\n".join(monitor_lines), "MONITOR")
        assert_absent(password, slowlog, "SLOWLOG")
        assert_absent(password, acl_log, "ACL LOG")
        assert_absent(password, acl_list, "ACL LIST")
        assert_absent(password, caplog.text, "the rotator's log")
        assert_absent(password, _text([r.__dict__ for r in caplog.records]), "log records")


# ---------------------------------------------------------------------------- two users
# ``acl_users: [a, b]``: the rotation sets a new password on the user not in use and
# switches to it; retirement removes the previous user's passwords (observable).


def _named(user: str, password: str, name: str) -> aioredis.Redis:
    """One connection (no retry, no reconnect) as ``user``, named ``name``."""
    return _redis(
        username=user,
        password=password,
        client_name=name,
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),
    )


async def connected_users(admin: aioredis.Redis, user: str) -> list[str]:
    """The client names of the connections authenticated as ``user``."""
    return [c.name for c in await client_list(admin) if c.user == user]


@pytest.fixture
async def second_user(admin: aioredis.Redis) -> AsyncIterator[str]:
    user = f"maily_t_{uid()}_b"
    yield user
    await _cmd(admin, "ACL", "DELUSER", user)


class Pair(Setup):
    """A consumer secret logging in as ``user`` (the first of two ACL users)."""

    def __init__(
        self, vault: VaultClient, users: tuple[str, str], password: str, name: str
    ) -> None:
        super().__init__(vault, users[0], password, name)
        self.users = users

    @property
    def options(self) -> dict[str, Any]:
        return {"acl_users": list(self.users), "admin_secret": self.admin_secret}


@pytest.fixture
async def pair(vault: VaultClient, admin: aioredis.Redis, acl_user: str, second_user: str) -> Pair:
    s = Pair(vault, (acl_user, second_user), random_password(), uid())
    assert await ensure_redis_acl_user(admin, acl_user, password=s.password) is True
    assert await ensure_redis_acl_user(admin, second_user) is True  # no password: idle
    mount = vault.settings.kv_mount
    await vault.kv.write(
        KV2Path(mount, s.secret),
        {
            "redis_host": REDIS_HOST,
            "redis_port": REDIS_PORT,
            "redis_username": acl_user,
            "redis_password": s.password,
            "db_password": "other-type-keeps-this",
        },
        cas=0,
    )
    await vault.kv.write(
        KV2Path(mount, s.admin_secret), {"host": REDIS_HOST, "port": REDIS_PORT}, cas=0
    )
    return s


async def _acl_rules(admin: aioredis.Redis, user: str) -> str:
    """``ACL LIST``'s line of ``user`` without its password hashes (flags, keys, commands)."""
    lines = [_text(x) for x in await _cmd(admin, "ACL", "LIST")]
    (line,) = [ln for ln in lines if ln.split(" ")[1] == user]
    return " ".join(p for p in line.split(" ") if not p.startswith("#"))


def test_the_built_in_config_rotates_two_users() -> None:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    opts = RedisOptions.model_validate(doc["types"]["redis"]["options"])
    assert opts.two_users and opts.users == ("maily", "maily_b")


async def test_two_users_one_rotation_step_by_step(pair: Pair, admin: aioredis.Redis) -> None:
    s, rot = pair, RedisAclRotator()
    a, b = s.users
    ctx = s.ctx()
    await rot.check(ctx)
    assert f"ACL user {b}" in await rot.describe(ctx)
    rules_a = await _acl_rules(admin, a)

    pending = await rot.create_pending(ctx)
    new = pending["password"]
    assert pending["user"] == b and pending["previous_user"] == a
    assert await hashes(admin, b) == frozenset()  # create_pending changes nothing

    await rot.apply(ctx, pending)
    await rot.apply(ctx, pending)  # idempotent
    assert await hashes(admin, b) == {password_sha256(new)}
    assert await hashes(admin, a) == {password_sha256(s.password)}  # the user in use: untouched
    assert_absent(new, _text(await _cmd(admin, "ACL", "LIST")), "ACL LIST")

    await rot.verify(ctx, pending)
    before = await s.consumer_version()
    version = await rot.promote(ctx, pending)
    assert version == before + 1 and await rot.promote(ctx, pending) == version
    data = await s.consumer()
    assert (data["redis_username"], data["redis_password"]) == (b, new)
    assert data["db_password"] == "other-type-keeps-this"

    retiring = rot.retiring(ctx, pending)
    assert retiring == {"user": a, "mode": "acl_users"}
    assert await can_login(a, s.password)  # grace: the previous user still logs in

    await rot.retire(ctx, retiring)
    assert await rot.retire(ctx, retiring)  # idempotent, and says what it did
    assert await hashes(admin, a) == frozenset()
    assert not await can_login(a, s.password)
    assert await can_login(b, new)
    assert await _acl_rules(admin, a) == rules_a  # nothing else of the user changed


async def test_two_users_second_rotation_flips_back_and_resets_old_passwords(
    pair: Pair, admin: aioredis.Redis
) -> None:
    s, rot = pair, RedisAclRotator()
    a, b = s.users
    first = await run_all(rot, s.ctx())
    second = await run_all(rot, s.ctx())
    assert (first["user"], second["user"]) == (b, a)
    # a's original password is gone: apply reset it to the new one only
    assert await hashes(admin, a) == {password_sha256(second["password"])}
    assert await hashes(admin, b) == {password_sha256(first["password"])}
    data = await s.consumer()
    assert (data["redis_username"], data["redis_password"]) == (a, second["password"])
    assert not await can_login(a, s.password)


async def test_two_users_retire_never_the_user_in_use(pair: Pair, admin: aioredis.Redis) -> None:
    s, rot = pair, RedisAclRotator()
    ctx = s.ctx()
    note = await rot.retire(ctx, {"user": s.users[0], "mode": "acl_users"})
    assert note is not None and "in use" in note
    assert await can_login(s.users[0], s.password)
    assert await hashes(admin, s.users[0]) == {password_sha256(s.password)}
    # a user that is not one of the configured two is refused, not changed
    with pytest.raises(RotatorConfigError, match="not one of the ACL users"):
        await rot.retire(ctx, {"user": "someone_else", "mode": "acl_users"})
    # apply refuses to touch the user in use too
    pending = await rot.create_pending(ctx)
    wrong = {**pending, "user": s.users[0]}
    with pytest.raises(RotationError, match="in use"):
        await rot.apply(ctx, wrong)
    assert await hashes(admin, s.users[0]) == {password_sha256(s.password)}


async def test_two_users_failed_verification_rolls_back(pair: Pair, admin: aioredis.Redis) -> None:
    s, rot = pair, RedisAclRotator()
    a, b = s.users
    ctx = s.ctx()
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await _cmd(admin, "ACL", "SETUSER", b, "resetpass")  # the change is lost before verify
    with pytest.raises(RotationError) as err:
        await rot.verify(ctx, pending)
    assert_absent(pending["password"], str(err.value), "the error")
    await rot.apply(ctx, pending)
    await rot.rollback(ctx, pending)
    assert await hashes(admin, b) == frozenset()
    data = await s.consumer()
    assert (data["redis_username"], data["redis_password"]) == (a, s.password)
    assert await can_login(a, s.password)


@pytest.mark.parametrize("step", ["created", "applied", "verified", "promoted"])
async def test_two_users_crash_after_each_step_then_resume(
    bao: Bao, pair: Pair, admin: aioredis.Redis, tmp_path: Path, step: str
) -> None:
    s = pair
    a, b = s.users
    prefix = f"rot-{uid()}"
    cfg_path = write_config(tmp_path, s, prefix)
    proc = crash_engine_run(bao, cfg_path, "redis", step)
    assert proc.returncode == 70, proc.stderr[-2000:]
    state = (await s.vault.kv.read(KV2Path(s.vault.settings.kv_mount, f"{prefix}/redis"))).data
    assert state["outcome"] == "in_progress" and state["step"] == step
    new = state["pending"]["password"]
    data = await s.consumer()
    expect = (b, new) if step == "promoted" else (a, s.password)
    assert (data["redis_username"], data["redis_password"]) == expect
    assert await can_login(*expect)

    engine = RotationEngine(RotationConfig.load(cfg_path), "development", client=s.vault)
    report = await engine.run(["redis"])
    (res,) = report.results
    assert res.status == "resumed", res.reason
    data = await s.consumer()
    assert (data["redis_username"], data["redis_password"]) == (b, new)
    assert await hashes(admin, b) == {password_sha256(new)}
    assert await can_login(b, new) and await can_login(a, s.password)  # grace: both work


async def test_two_users_usage_names_the_clients_of_each_user(
    pair: Pair, admin: aioredis.Redis
) -> None:
    s, rot = pair, RedisAclRotator()
    a, b = s.users
    ctx = s.ctx()
    old_app = _named(a, s.password, f"old-app-{uid()}")
    pending = await run_all(rot, ctx)
    new_apps = [_named(b, pending["password"], "new-app") for _ in range(2)]
    try:
        for c in (old_app, *new_apps):
            await c.ping()
        retiring = rot.retiring(ctx, pending)
        adoption = await rot.usage(ctx, retiring)
        assert adoption is not None and adoption.current and adoption.previous
        assert adoption.current.credential == b and adoption.previous.credential == a
        (cur,) = adoption.current.users
        assert (cur.count, cur.application, cur.address) == (2, "new-app", "127.0.0.1")
        (prev,) = adoption.previous.users
        assert (
            prev.count == 1 and prev.application == old_app.get_connection_kwargs()["client_name"]
        )
        assert adoption.previous.idle is False and a in adoption.previous.describe()
        await old_app.aclose()
        adoption = await rot.usage(ctx, retiring)
        assert adoption is not None and adoption.previous is not None
        assert adoption.previous.idle is True
        # no retiring record: the current user only
        only = await rot.usage(ctx, None)
        assert only is not None and only.previous is None and only.current is not None
        assert only.current.total == 2
    finally:
        for c in (old_app, *new_apps):
            await c.aclose()


async def test_usage_of_one_user_with_two_passwords_is_not_observable(setup: Setup) -> None:
    rot = RedisAclRotator()
    ctx = setup.ctx()
    pending = await run_all(rot, ctx)
    adoption = await rot.usage(ctx, rot.retiring(ctx, pending))
    assert adoption is not None and adoption.current and adoption.previous
    for u in (adoption.current, adoption.previous):
        assert u.observable is False and u.idle is None and "acl_users" in u.note


async def test_usage_of_an_unreachable_redis_raises(pair: Pair) -> None:
    """Unknown is never reported as idle."""
    s, rot = pair, RedisAclRotator()
    mount = s.vault.settings.kv_mount
    await s.vault.kv.update(KV2Path(mount, s.admin_secret), lambda d: {**d, "port": 1})
    with pytest.raises(RotationError, match="cannot connect"):
        await rot.usage(s.ctx(), {"user": s.users[1], "mode": "acl_users"})


async def test_two_users_end_sessions_kills_the_previous_users_connections(
    pair: Pair, admin: aioredis.Redis
) -> None:
    s, rot = pair, RedisAclRotator()
    a, b = s.users
    ctx = s.ctx()
    straggler = _named(a, s.password, "straggler")
    await straggler.ping()
    pending = await run_all(rot, ctx)
    current = _named(b, pending["password"], "current")
    await current.ping()
    try:
        retiring = rot.retiring(ctx, pending)
        assert retiring is not None
        ctx.end_sessions = True
        note = await rot.retire(ctx, retiring)
        assert note is not None and "1 x straggler" in note and "ended 1" in note
        assert await connected_users(admin, a) == []
        with pytest.raises(RedisError):
            await straggler.ping()  # killed, and its password no longer logs in
        assert not await can_login(a, s.password)
        assert await current.ping()  # the user in use is not touched
        assert await connected_users(admin, b) == ["current"]
    finally:
        await straggler.aclose()
        await current.aclose()


async def test_two_users_retire_without_end_sessions_keeps_connections(
    pair: Pair, admin: aioredis.Redis
) -> None:
    """At the grace without a hard deadline: the stragglers are named, not disconnected."""
    s, rot = pair, RedisAclRotator()
    ctx = s.ctx()
    straggler = _named(s.users[0], s.password, "straggler")
    await straggler.ping()
    try:
        pending = await run_all(rot, ctx)
        retiring = rot.retiring(ctx, pending)
        assert retiring is not None
        note = await rot.retire(ctx, retiring)
        assert note is not None and "1 x straggler from 127.0.0.1" in note
        assert "ended" not in note
        assert await straggler.ping()
        assert not await can_login(s.users[0], s.password)
    finally:
        await straggler.aclose()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("both_modes", "cannot be set together with acl_user"),
        ("same_twice", "two different ACL users"),
        ("default_user", "must not be 'default'"),
        ("username_key_null", "username_key"),
        ("not_one_of_them", "not one of the ACL users"),
        ("second_missing", "does not exist"),
        ("second_nopass", "nopass"),
        ("admin_is_app_user", "names the application's user"),
    ],
)
async def test_two_users_bad_configuration_is_a_clear_error_and_changes_nothing(
    pair: Pair, admin: aioredis.Redis, case: str, expect: str
) -> None:
    s, rot = pair, RedisAclRotator()
    a, b = s.users
    mount = s.vault.settings.kv_mount
    options: dict[str, Any] = dict(s.options)
    if case == "both_modes":
        options["acl_user"] = a
    elif case == "same_twice":
        options["acl_users"] = [a, a]
    elif case == "default_user":
        options["acl_users"] = [a, "default"]
    elif case == "username_key_null":
        options["username_key"] = None
    elif case == "not_one_of_them":
        await s.vault.kv.update(
            KV2Path(mount, s.secret), lambda d: {**d, "redis_username": "someone"}
        )
    elif case == "second_missing":
        options["acl_users"] = [a, f"missing_{uid()}"]
    elif case == "second_nopass":
        await _cmd(admin, "ACL", "SETUSER", b, "nopass")
    elif case == "admin_is_app_user":
        await s.vault.kv.update(
            KV2Path(mount, s.admin_secret),
            lambda d: {**d, "username": b, "password": random_password()},
        )
    ctx = s.ctx(options)
    before = (await hashes(admin, a), await hashes(admin, b), await s.consumer_version())
    with pytest.raises(RotatorConfigError) as err:
        await rot.check(ctx)
    assert expect in str(err.value)
    assert_absent(s.password, str(err.value), "the error")
    assert (await hashes(admin, a), await hashes(admin, b), await s.consumer_version()) == before


async def test_bootstrap_creates_both_users_and_keeps_the_one_in_use(
    bao: Bao, admin: aioredis.Redis
) -> None:
    """ensure_redis_rotation: two users with the same permissions, the config's password on
    the one redis_username names; rerun after a rotation flipped it: nothing flips back.
    drop_redis_user deletes the pair."""
    from maily_secrets.bootstrap import BootstrapReport, ensure_redis_rotation
    from maily_secrets.dev.bootstrap import drop_redis_user

    user = f"maily_t_{uid()}"
    second = f"{user}_b"
    async with scratch_mount(bao, "rb") as m, bao.client(kv_mount=m) as vault:
        password = random_password()
        path = KV2Path(m, "config")
        await vault.kv.write(
            path,
            {"redis_host": REDIS_HOST, "redis_port": REDIS_PORT, "redis_password": password},
            cas=0,
        )
        try:
            report = BootstrapReport()
            assert await ensure_redis_rotation(vault, report, kv_mount=m, user=user) is None
            assert f"Redis ACL user {user}" in report.created
            assert f"Redis ACL user {second}" in report.created
            assert (await vault.kv.read(path)).data["redis_username"] == user
            assert await hashes(admin, user) == {password_sha256(password)}
            assert await hashes(admin, second) == frozenset()
            assert await _acl_rules(admin, user) == (await _acl_rules(admin, second)).replace(
                second, user
            )
            # a rotation to the second user, then the bootstrap again
            s = Pair(vault, (user, second), password, uid())
            s.secret = "config"
            await vault.kv.write(
                KV2Path(m, s.admin_secret), {"host": REDIS_HOST, "port": REDIS_PORT}, cas=0
            )
            pending = await run_all(RedisAclRotator(), s.ctx())
            again = BootstrapReport()
            assert await ensure_redis_rotation(vault, again, kv_mount=m, user=user) is None
            assert again.created == []
            data = (await vault.kv.read(path)).data
            assert (data["redis_username"], data["redis_password"]) == (
                second,
                pending["password"],
            )
            assert await can_login(second, pending["password"])
        finally:
            assert await drop_redis_user(REDIS_HOST, REDIS_PORT, user) is True
        names = {_text(u) for u in await _cmd(admin, "ACL", "USERS")}
        assert user not in names and second not in names
