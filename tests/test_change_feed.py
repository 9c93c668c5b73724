"""The change feed against a real OpenBao and a real Redis: one beacon poll per interval
whatever the number of watched paths, writes through us announced, writes around us
caught by the slow full poll, no lost entry under concurrent bumps, the Redis push and
its fallback to the beacon, and no secret value in any log.

Requests are counted through the service's observer, which the client tells of every
HTTP attempt it really sends (nothing here stands in for Vault). Watchers sleep on a
ManualClock; the tests move it and count polls instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from maily_secrets.changes import (
    CHANNEL,
    Publisher,
    RedisTarget,
    Subscriber,
    bump,
    entries,
    vault_reader,
)
from maily_secrets.clock import ManualClock, settle
from maily_secrets.dev.server import bao_binary
from maily_secrets.listeners import JITTER
from maily_secrets.observe import Observer
from maily_secrets.paths import KV2Path
from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive, until
from .secrecy import assert_absent

REPO = Path(__file__).resolve().parent.parent
INTERVAL = 1.0  # ManualClock seconds between two polls of the beacon
SLOW = 3600.0  # a full poll that never comes within a test unless it says so


class Requests(Observer):
    """Every HTTP attempt the client sends, as (method, path)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def vault_request(self, method: str, path: str, status: str, seconds: float) -> None:
        self.sent.append((method, path))

    def to(self, path: str) -> int:
        return sum(1 for _, p in self.sent if p == path)

    def mark(self) -> int:
        return len(self.sent)

    def since(self, mark: int) -> list[tuple[str, str]]:
        return self.sent[mark:]


def feed_service(
    bao: Bao, mount: str, clock: ManualClock, observer: Observer | None = None, **kw: Any
) -> VaultService:
    kw.setdefault("listener_full_poll_interval", SLOW)
    return VaultService(
        bao.settings(kv_mount=mount, listener_interval=INTERVAL, **kw),
        clock=clock,
        observer=observer,
    )


async def secrets(root: VaultClient, mount: str, n: int) -> list[str]:
    paths = [f"{mount}/data/s{i:04d}" for i in range(n)]
    await asyncio.gather(*(root.kv.write(p, {"v": 0}, cas=0) for p in paths))
    return paths


@pytest.fixture
async def mount(bao: Bao) -> str:
    """A KV v2 mount of the test's own: its beacon ``<mount>/data/_changes`` is too."""
    return await bao.new_kv_mount("feed")


async def step(
    clock: ManualClock, svc: VaultService, done: Any, what: str, asleep: Any = None
) -> int:
    """Move the clock on by just under an interval at a time, only while the feed (or
    ``asleep()``) is asleep, until ``done()``; returns the steps. A step lets the beacon be
    polled at most once. (``drive`` would jump to the next sleeper's deadline, a full poll's,
    while a beacon poll is in flight.)"""
    feed = svc._listeners.feed
    assert feed is not None
    waiting = asleep or (lambda: feed._sleeper is not None)
    deadline = time.monotonic() + 30
    steps = 0
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached ({feed!r})")
        if not waiting():
            await asyncio.sleep(0)  # a poll is in flight
            continue
        # less than the shortest wait: one advance never wakes the feed twice
        await clock.advance(INTERVAL * (1 - JITTER) - 0.01)
        steps += 1
    return steps


async def beacon_polls(clock: ManualClock, svc: VaultService, n: int) -> None:
    feed = svc._listeners.feed
    assert feed is not None
    target = feed.polls + n
    await step(clock, svc, lambda: feed.polls >= target, f"{n} beacon polls")
    await until(lambda: feed._sleeper is not None, what="the feed back asleep")
    await settle()


# ---------------------------------------------------------------------------- requests
async def test_many_watched_paths_cost_one_beacon_request_per_interval(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    n = 200
    paths = await secrets(root, mount, n)
    clock, seen = ManualClock(), Requests()
    svc = feed_service(bao, mount, clock, seen)
    beacon = KV2Path(mount, "_changes")
    got: list[dict[str, Any]] = []
    try:
        for p in paths:
            await svc.register_secret_listener(p, got.append)
        assert seen.to(beacon.metadata) == 0  # registering reads each baseline, no beacon
        feed = svc._listeners.feed
        assert feed is not None
        mark, polls = seen.mark(), feed.polls
        await beacon_polls(clock, svc, 10)
        # one request per interval (poll), all to the beacon's metadata (it does not exist
        # yet); on a loaded machine the stepped clock may let one more poll in than ten
        made = feed.polls - polls
        assert made >= 10
        assert seen.since(mark) == [("GET", beacon.metadata)] * made
        assert svc._listeners.feed is not None and svc._listeners.feed.version == 0
        assert got == []

        # one write through a service: the next poll reads the beacon, then that one path
        async with VaultService(bao.settings(kv_mount=mount)) as writer:
            await writer.put_secret(paths[7], {"v": 1}, cas=1)
        mark = seen.mark()
        await step(clock, svc, lambda: got == [{"v": 1}], "the callback")
        await beacon_polls(clock, svc, 5)
        assert set(seen.since(mark)) == {
            ("GET", beacon.data),
            ("GET", beacon.metadata),
            ("GET", paths[7]),
        }
        assert seen.since(mark).count(("GET", beacon.data)) == 1  # it moved once
        assert seen.since(mark).count(("GET", paths[7])) == 1
        assert not any("/metadata/s" in p for _, p in seen.since(mark))  # no per-path poll
    finally:
        await svc.close()


async def test_with_the_feed_off_each_path_is_polled_every_interval(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    """The behaviour before the feed (and the baseline the bench compares with)."""
    paths = await secrets(root, mount, 20)
    clock, seen = ManualClock(), Requests()
    svc = feed_service(bao, mount, clock, seen, change_feed="off")
    try:
        for p in paths:
            await svc.register_secret_listener(p, lambda v: None)
        assert svc._listeners.feed is None
        watchers = list(svc._listeners.watchers.values())
        mark = seen.mark()
        await drive(clock, lambda: all(w.polls >= 3 for w in watchers), what="three polls each")

        def metadata() -> list[str]:
            return [p for _, p in seen.since(mark) if "/metadata/" in p]

        await until(lambda: len(metadata()) >= 3 * len(paths), what="the polls' answers")
        assert {p.rsplit("/", 1)[1] for p in metadata()} == {p.rsplit("/", 1)[1] for p in paths}
        assert not any(p.endswith("_changes") for _, p in seen.since(mark))
    finally:
        await svc.close()


# ---------------------------------------------------------------------------- delivery
async def test_a_write_through_another_service_reaches_this_listener_via_the_beacon(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    (path,) = await secrets(root, mount, 1)
    clock, seen = ManualClock(), Requests()
    svc = feed_service(bao, mount, clock, seen)
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener(path, got.append)
        async with VaultService(bao.settings(kv_mount=mount)) as other:
            await other.put_secret(path, {"v": 1}, cas=1)
            await step(clock, svc, lambda: got == [{"v": 1}], "put_secret's change")
            await other.update_secret(path, lambda cur: {**cur, "w": 2})
            await step(clock, svc, lambda: len(got) == 2, "update_secret's change")
        assert got == [{"v": 1}, {"v": 1, "w": 2}]
        assert (await svc.get_secret(path)) == {"v": 1, "w": 2}  # the cache went first
        w = svc._listeners.watchers[path]
        assert (w.reads, w.polls) == (2, 0)  # two reads on the beacon's word, no poll
        beacon = (await root.kv.read(KV2Path(mount, "_changes"))).data
        assert entries(beacon) == {path: 3}
    finally:
        await svc.close()


async def test_a_write_from_another_process_reaches_this_listener(
    bao: Bao, root: VaultClient, mount: str, tmp_path: Path
) -> None:
    (path,) = await secrets(root, mount, 1)
    clock = ManualClock()
    svc = feed_service(bao, mount, clock)
    got: list[dict[str, Any]] = []
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from maily_secrets.service import VaultService

            async def main() -> None:
                async with VaultService() as svc:  # VAULT_ADDR, VAULT_TOKEN, the mount: env
                    await svc.put_secret({path!r}, {{"from": "another process"}}, cas=1)

            asyncio.run(main())
            """
        )
    )
    env = {
        **os.environ,
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "MAILY_SECRETS_MOUNT": mount,
        "PYTHONPATH": f"{REPO / 'src'}:{REPO}",
    }
    try:
        await svc.register_secret_listener(path, got.append)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, str(script)], env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()[-500:]
        await step(clock, svc, lambda: got == [{"from": "another process"}], "the callback")
    finally:
        await svc.close()


async def test_a_bao_kv_put_around_us_is_caught_by_the_full_poll(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    (path,) = await secrets(root, mount, 1)
    clock = ManualClock()
    full = 30.0
    svc = feed_service(bao, mount, clock, listener_full_poll_interval=full)
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener(path, got.append)
        registered = clock.monotonic()
        name = path.split("/data/", 1)[1]
        env = {**os.environ, "BAO_ADDR": bao.addr, "BAO_TOKEN": bao.token}
        done = await asyncio.to_thread(
            subprocess.run,
            [bao_binary(), "kv", "put", "-cas=1", f"-mount={mount}", name, "v=around"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()[-300:]
        await beacon_polls(clock, svc, 5)
        assert got == []  # the beacon knows nothing of it
        await drive(clock, lambda: got == [{"v": "around"}], what="the full poll")
        # the first full poll comes after half to all of the full interval (+-10%)
        assert clock.monotonic() - registered >= full * 0.5 * 0.9
        w = svc._listeners.watchers[path]
        assert w.polls >= 1 and w.reads == 0  # its own poll, not the feed, saw it
    finally:
        await svc.close()


async def test_a_local_write_notifies_once_and_is_not_read_again(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    (path,) = await secrets(root, mount, 1)
    clock, seen = ManualClock(), Requests()
    svc = feed_service(bao, mount, clock, seen)
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener(path, got.append)
        await svc.put_secret(path, {"v": 1}, cas=1)
        await until(lambda: got == [{"v": 1}])  # at once, no poll needed
        mark = seen.mark()
        await beacon_polls(clock, svc, 5)
        assert got == [{"v": 1}]
        assert ("GET", path) not in seen.since(mark)  # the beacon says 2: known already
    finally:
        await svc.close()


# ---------------------------------------------------------------------------- the beacon
async def test_concurrent_bumps_lose_no_entry(bao: Bao, mount: str) -> None:
    beacon = KV2Path(mount, "_changes")
    async with bao.client() as a, bao.client() as b:
        jobs = [bump(a, beacon, {f"{mount}/data/a{i}": i + 1}) for i in range(15)]
        jobs += [bump(b, beacon, {f"{mount}/data/b{i}": i + 1}) for i in range(15)]
        assert all(await asyncio.gather(*jobs))
        have = entries((await a.kv.read(beacon)).data)
        assert have == {
            **{f"{mount}/data/a{i}": i + 1 for i in range(15)},
            **{f"{mount}/data/b{i}": i + 1 for i in range(15)},
        }
        # an entry only moves forward: a late, older bump puts nothing back
        assert await bump(a, beacon, {f"{mount}/data/a3": 1})
        assert entries((await a.kv.read(beacon)).data)[f"{mount}/data/a3"] == 4


async def test_two_services_writing_at_once_both_reach_the_beacon(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    paths = await secrets(root, mount, 20)
    async with (
        VaultService(bao.settings(kv_mount=mount)) as one,
        VaultService(bao.settings(kv_mount=mount)) as two,
    ):
        await asyncio.gather(
            *((one if i % 2 else two).put_secret(p, {"v": 1}, cas=1) for i, p in enumerate(paths))
        )
    have = entries((await root.kv.read(KV2Path(mount, "_changes"))).data)
    assert have == {p: 2 for p in paths}


async def test_a_beacon_the_token_may_not_read_falls_back_to_polling_each_path(
    bao: Bao, root: VaultClient, mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = await secrets(root, mount, 1)
    name = path.split("/data/", 1)[1]
    policy = f"feed-{uuid.uuid4().hex[:8]}"
    hcl = (
        f'path "{mount}/data/{name}" {{ capabilities = ["read"] }}\n'
        f'path "{mount}/metadata/{name}" {{ capabilities = ["read"] }}\n'
    )
    await root.write(f"sys/policies/acl/{policy}", {"policy": hcl})
    r = await root.write("auth/token/create", {"policies": [policy], "ttl": "10m"})
    token = str((r.body or {})["auth"]["client_token"])
    clock = ManualClock()
    svc = feed_service(bao, mount, clock, token=token)
    got: list[dict[str, Any]] = []
    try:
        with caplog.at_level(logging.WARNING, logger="maily_secrets.listeners"):
            await svc.register_secret_listener(path, got.append)
            feed = svc._listeners.feed
            assert feed is not None
            await step(clock, svc, lambda: feed.denied, "the beacon refused")
            w = svc._listeners.watchers[path]
            assert svc._listeners.per_path(w)

            def asleep() -> bool:
                return w._sleeper is not None

            for v in (1, 2):  # around us: only a poll of the path can see it, each interval
                await until(asleep)
                polls = w.polls
                await root.kv.write(path, {"v": v}, cas=v)
                n = await step(clock, svc, lambda p=polls: w.polls > p, f"poll {v}", asleep)
                assert n <= 2  # the next interval's poll (not the full poll, an hour away)
                await until(lambda v=v: len(got) == v, what="that poll's callback")
            assert got == [{"v": 1}, {"v": 2}]
        refused = [r for r in caplog.records if "may not read the beacon" in r.getMessage()]
        assert len(refused) == 1
    finally:
        await svc.close()
        await root.delete(f"sys/policies/acl/{policy}")


async def test_a_failed_bump_does_not_fail_the_write_and_logs_no_value(
    bao: Bao, root: VaultClient, mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = await secrets(root, mount, 1)
    name = path.split("/data/", 1)[1]
    policy = f"feed-w-{uuid.uuid4().hex[:8]}"
    hcl = f'path "{mount}/data/{name}" {{ capabilities = ["create", "read", "update"] }}\n'
    await root.write(f"sys/policies/acl/{policy}", {"policy": hcl})
    r = await root.write("auth/token/create", {"policies": [policy], "ttl": "10m"})
    token = str((r.body or {})["auth"]["client_token"])
    canary = "canary-" + uuid.uuid4().hex
    try:
        with caplog.at_level(logging.DEBUG):
            async with VaultService(bao.settings(kv_mount=mount, token=token)) as svc:
                assert await svc.put_secret(path, {"password": canary}, cas=1) == 2
        failed = [r for r in caplog.records if "could not record the change" in r.getMessage()]
        assert len(failed) == 1 and path in failed[0].getMessage()
        for rec in caplog.records:
            assert_absent(canary, f"{rec.getMessage()} {vars(rec)!r}", "logs")
            assert_absent(token, f"{rec.getMessage()} {vars(rec)!r}", "logs")
        assert (await root.kv.read(path)).data == {"password": canary}
    finally:
        await root.delete(f"sys/policies/acl/{policy}")


async def test_the_rotation_kit_bumps_the_beacon_when_it_writes(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    """``cas_update`` and ``promote_fields`` (every rotator's write) announce it."""
    from maily_secrets.rotation.kit import cas_update, promote_fields

    (path,) = await secrets(root, mount, 1)
    name = path.split("/data/", 1)[1]

    class Ctx:  # what the two helpers use of a RotationContext
        type_name = "probe"
        log = logging.getLogger("test.kit")
        client = root

        def secret_path(self, n: str | None = None) -> KV2Path:
            return KV2Path(mount, n or name)

        async def read_secret(self, n: str | None = None, step: str = "") -> Any:
            v = await root.kv.read(self.secret_path(n))
            return dict(v.data), v.version

    async with VaultClient(bao.settings(kv_mount=mount)) as client:
        ctx = Ctx()
        ctx.client = client
        version, wrote = await cas_update(ctx, "promote", lambda d: {**d, "k": 1})  # type: ignore[arg-type]
        assert wrote and entries((await root.kv.read(KV2Path(mount, "_changes"))).data) == {
            path: version
        }
        version = await promote_fields(ctx, {"k": 2})  # type: ignore[arg-type]
        assert entries((await root.kv.read(KV2Path(mount, "_changes"))).data) == {path: version}


# ---------------------------------------------------------------------------- push
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisUser:
    """An ACL user of the test's own on the machine's Redis (deleted afterwards)."""

    def __init__(self) -> None:
        self.name = f"maily-feed-{uuid.uuid4().hex[:10]}"
        self.password = "canary-redis-" + uuid.uuid4().hex

    async def set_password(self, password: str) -> None:
        self.password = password
        async with aioredis.Redis(host="127.0.0.1", port=6379) as admin:
            await admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL",
                "SETUSER",
                self.name,
                "on",
                "resetpass",
                f">{password}",
                "resetchannels",
                f"&{CHANNEL}",
                "-@all",
                "+@connection",
                "+@pubsub",
            )

    async def kill(self) -> None:
        async with aioredis.Redis(host="127.0.0.1", port=6379) as admin:
            await admin.execute_command("CLIENT", "KILL", "USER", self.name)  # type: ignore[no-untyped-call]

    async def drop(self) -> None:
        async with aioredis.Redis(host="127.0.0.1", port=6379) as admin:
            await admin.execute_command("ACL", "DELUSER", self.name)  # type: ignore[no-untyped-call]


@pytest.fixture
async def redis_user() -> AsyncIterator[RedisUser]:
    user = RedisUser()
    await user.set_password(user.password)
    try:
        yield user
    finally:
        await user.drop()


async def push_secret(root: VaultClient, mount: str, user: RedisUser, port: int = 6379) -> str:
    path = f"{mount}/data/push"
    data = {
        "redis_host": "127.0.0.1",
        "redis_port": port,
        "redis_username": user.name,
        "redis_password": user.password,
    }
    _, version = await root.kv.read_with_version(path)
    await root.kv.write(path, data, cas=version)
    return path


async def subscribed(svc: VaultService) -> Subscriber:
    await until(lambda: svc._listeners.push is not None, what="the subscriber")
    sub = svc._listeners.push
    assert sub is not None
    await until(lambda: sub.connected, what="subscribed to the channel")
    return sub


async def test_push_delivers_at_once_without_a_beacon_poll(
    bao: Bao,
    root: VaultClient,
    mount: str,
    redis_user: RedisUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (path,) = await secrets(root, mount, 1)
    where = await push_secret(root, mount, redis_user)
    clock = ManualClock()
    push = {"change_push": "redis", "change_push_secret": where}
    svc = feed_service(bao, mount, clock, **push)
    canary = "canary-value-" + uuid.uuid4().hex
    got: list[dict[str, Any]] = []
    try:
        with caplog.at_level(logging.DEBUG):
            await svc.register_secret_listener(path, got.append)
            sub = await subscribed(svc)
            feed = svc._listeners.feed
            assert feed is not None
            async with VaultService(bao.settings(kv_mount=mount, **push)) as writer:
                await writer.put_secret(path, {"password": canary}, cas=1)
                assert writer._publisher is not None and writer._publisher.published == 1
            # the clock never moves: no beacon poll, no full poll; only the push did this
            await until(lambda: got == [{"password": canary}], what="the pushed change")
            assert feed.polls == 0 and sub.messages >= 1
            w = svc._listeners.watchers[path]
            assert (w.reads, w.polls) == (1, 0)
        for rec in caplog.records:
            text = f"{rec.getMessage()} {vars(rec)!r}"
            assert_absent(canary, text, "logs")
            assert_absent(redis_user.password, text, "logs")
        for obj in (sub, writer._publisher, RedisTarget("h", 1, "u", redis_user.password)):
            assert_absent(redis_user.password, repr(obj), "repr")
    finally:
        await svc.close()


async def test_push_reads_the_credentials_again_when_the_password_rotated(
    bao: Bao, root: VaultClient, mount: str, redis_user: RedisUser
) -> None:
    (path,) = await secrets(root, mount, 1)
    where = await push_secret(root, mount, redis_user)
    clock = ManualClock()
    push = {"change_push": "redis", "change_push_secret": where}
    svc = feed_service(bao, mount, clock, **push)
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener(path, got.append)
        sub = await subscribed(svc)
        # the password rotates: Redis and the secret change (the service cached the old one)
        await redis_user.set_password("canary-redis-" + uuid.uuid4().hex)
        await push_secret(root, mount, redis_user)
        await redis_user.kill()  # the subscriber's connection drops; its login is refused
        await drive(clock, lambda: sub.connects >= 2 and sub.connected, what="logged in again")
        await root.kv.write(path, {"v": 2}, cas=1)  # around us, then announced on the push
        publisher = Publisher(vault_reader(root, where), where)
        try:
            assert await publisher.publish(path, 2)
        finally:
            await publisher.close()
        feed = svc._listeners.feed
        assert feed is not None
        polls = feed.polls
        await until(lambda: got == [{"v": 2}], what="the change pushed after the rotation")
        assert feed.polls == polls  # the push, not a beacon poll
    finally:
        await svc.close()


async def test_with_redis_unreachable_the_beacon_still_delivers(
    bao: Bao,
    root: VaultClient,
    mount: str,
    redis_user: RedisUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (path,) = await secrets(root, mount, 1)
    where = await push_secret(root, mount, redis_user, port=closed_port())
    clock = ManualClock()
    push = {"change_push": "redis", "change_push_secret": where}
    svc = feed_service(bao, mount, clock, **push)
    got: list[dict[str, Any]] = []
    try:
        with caplog.at_level(logging.WARNING):
            await svc.register_secret_listener(path, got.append)
            await until(lambda: svc._listeners.push is not None)
            sub = svc._listeners.push
            assert sub is not None
            await until(lambda: sub.failures >= 1, what="the refused connection")
            async with VaultService(bao.settings(kv_mount=mount, **push)) as writer:
                assert await writer.put_secret(path, {"v": 1}, cas=1) == 2  # never fails
                assert writer._publisher is not None and writer._publisher.failures == 1
            await step(clock, svc, lambda: got == [{"v": 1}], "the beacon's delivery")
            assert not sub.connected
        cannot = [r for r in caplog.records if "cannot listen on" in r.getMessage()]
        assert len(cannot) == 1  # one warning for the outage, not one per retry
        for rec in caplog.records:
            assert_absent(redis_user.password, f"{rec.getMessage()} {vars(rec)!r}", "logs")
    finally:
        await svc.close()


# ---------------------------------------------------------------------------- lifecycle
async def test_the_feed_stops_with_the_last_watcher_and_close(
    bao: Bao, root: VaultClient, mount: str
) -> None:
    paths = await secrets(root, mount, 2)
    clock = ManualClock()
    svc = feed_service(bao, mount, clock)
    try:
        subs = [await svc.register_secret_listener(p, lambda v: None) for p in paths]
        feed = svc._listeners.feed
        assert feed is not None and feed.running
        await subs[0].cancel()
        assert feed.running
        await subs[1].cancel()
        assert not feed.running and clock.sleepers == 0  # nothing polls any more
        await svc.register_secret_listener(paths[0], lambda v: None)
        assert feed.running
    finally:
        await svc.close()
    assert not feed.running and clock.sleepers == 0
