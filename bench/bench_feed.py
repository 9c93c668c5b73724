"""The change feed: Vault requests per interval with 1,000 watched paths, and the latency
from a change to its callback with the Redis push and with the beacon alone.

    bench/.venv/bin/python bench/run.py --only feed [--quick] [--root DIR]

Everything runs in a KV v2 mount of the run's own (so its beacon ``<mount>/data/_changes``
is too), with a 1 s listener interval.

(a) ``feed_requests``: one ``VaultService`` registers a listener on each of 1,000 seeded
paths, waits one interval, then counts the HTTP requests its client sends
(``client.stats``: what really went out) during ``WINDOW`` intervals, divided by their
number. Variants: the beacon (``MAILY_SECRETS_CHANGE_FEED`` default; the full per-path
poll set to an hour so that the window shows the interval's cost) and per-path polling
(``MAILY_SECRETS_CHANGE_FEED=off``, the behaviour before the feed). Goal: beacon = 1. The
slow full poll adds N / full_interval requests per second on average (1,000 / 300 s =
3.3/s with the default), spread out; the notes give it.

(b) ``feed_latency``: a second service writes (``put_secret``) to ``PATHS`` watched
paths, each change at a random phase of the poll cycle; the time runs from just before
``put_secret`` (so the write, the beacon bump and the publish are inside it) to the
callback in the listening service. Variants: push (``MAILY_SECRETS_CHANGE_PUSH=redis``,
the machine's Redis, an ACL user of the run's own) and the beacon only. The figure of a
round is its p95. Goals: push p95 <= 100 ms, beacon p95 <= the interval.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from bench_context import Context, interleave

INTERVAL = 1.0
N_PATHS = 1000
WINDOW = 5  # intervals counted per round (3 with --quick)
PATHS = 10  # watched paths written concurrently in a latency round
CHANGES = 3  # changes per path per latency round
CHANNEL_USER_RULES = ("-@all", "+@connection", "+@pubsub", "&maily:secrets:changes")


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _settings(ctx: Context, mount: str, **kw: Any) -> Any:
    from maily_secrets.settings import VaultSettings

    return VaultSettings(
        addr=ctx.addr,
        token=ctx.token,
        auth_method="token",
        kv_mount=mount,
        listener_interval=INTERVAL,
        **kw,
    )


async def _setup(ctx: Context, mount: str, n: int) -> list[str]:
    from maily_secrets.vault.client import VaultClient

    paths = [f"{mount}/data/w{i:04d}" for i in range(n)]
    async with VaultClient(_settings(ctx, mount)) as c:
        await c.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
        await c.kv.configure(mount)
        for _ in range(50):  # a fresh mount answers 400 "upgrading" for a moment
            try:
                await c.kv.write(f"{mount}/data/_probe", {"x": 1}, cas=0)
                break
            except Exception:
                await asyncio.sleep(0.1)
        sem = asyncio.Semaphore(16)

        async def one(p: str) -> None:
            async with sem:
                await c.kv.write(p, {"n": 0}, cas=0)

        await asyncio.gather(*(one(p) for p in paths))
    return paths


async def _teardown(ctx: Context, mount: str) -> None:
    from maily_secrets.vault.client import VaultClient

    async with VaultClient(_settings(ctx, mount)) as c:
        await c.delete(f"sys/mounts/{mount}")  # the run's own mount


# ---------------------------------------------------------------------------- (a)
async def _requests_round(
    ctx: Context, mount: str, paths: list[str], feed: bool, window: int, notes: dict[str, Any]
) -> float:
    from maily_secrets.service import VaultService

    kw: dict[str, Any] = {"listener_full_poll_interval": 3600.0}
    if not feed:
        kw["change_feed"] = "off"
    svc = VaultService(_settings(ctx, mount, **kw))
    try:
        await asyncio.gather(*(svc.register_secret_listener(p, lambda v: None) for p in paths))
        await asyncio.sleep(INTERVAL * 1.2)  # the first polls are under way
        before = sum(svc.client.stats.values())
        t0 = time.perf_counter()
        await asyncio.sleep(INTERVAL * window)
        sent = sum(svc.client.stats.values()) - before
        elapsed = time.perf_counter() - t0
        notes.setdefault("beacon" if feed else "per_path", []).append(
            {"requests": sent, "seconds": round(elapsed, 2)}
        )
        return sent / (elapsed / INTERVAL)
    finally:
        await svc.close()


# ---------------------------------------------------------------------------- (b)
class _Redis:
    """An ACL user of this run's own on the machine's Redis (deleted at the end)."""

    def __init__(self) -> None:
        self.user = f"maily-bench-feed-{uuid.uuid4().hex[:8]}"
        self.password = uuid.uuid4().hex + uuid.uuid4().hex

    async def create(self) -> None:
        import redis.asyncio as aioredis

        async with aioredis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2) as r:
            await r.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", self.user, "on", f">{self.password}", *CHANNEL_USER_RULES
            )

    async def drop(self) -> None:
        import redis.asyncio as aioredis

        async with aioredis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2) as r:
            await r.execute_command("ACL", "DELUSER", self.user)  # type: ignore[no-untyped-call]


async def _latency_round(
    ctx: Context, mount: str, paths: list[str], push: bool, samples: dict[str, list[float]]
) -> float:
    from maily_secrets.service import VaultService

    kw: dict[str, Any] = {"listener_full_poll_interval": 3600.0}
    if push:
        kw.update(change_push="redis", change_push_secret=f"{mount}/data/push")
    reader = VaultService(_settings(ctx, mount, **kw))
    writer = VaultService(_settings(ctx, mount, **kw))
    latencies: list[float] = []
    try:
        await writer.get_secret(paths[0])  # connection and token check, outside the clock
        events = {p: asyncio.Event() for p in paths}
        stamps: dict[str, float] = {}

        def on(p: str) -> Any:
            async def cb(value: dict[str, Any]) -> None:
                stamps[p] = time.perf_counter()
                events[p].set()

            return cb

        for p in paths:
            await reader.register_secret_listener(p, on(p))
        if push:  # subscribed before the first change
            for _ in range(200):
                sub = reader._listeners.push
                if sub is not None and sub.connected:
                    break
                await asyncio.sleep(0.02)
            else:
                raise RuntimeError("the push subscriber did not connect to Redis")
        versions = {p: await writer.get_secret_version(p) or 1 for p in paths}

        async def drive(p: str) -> None:
            for _ in range(CHANGES):
                await asyncio.sleep(random.uniform(0, INTERVAL))  # a random phase
                events[p].clear()
                t0 = time.perf_counter()
                versions[p] = await writer.put_secret(p, {"n": versions[p]}, cas=versions[p])
                await asyncio.wait_for(events[p].wait(), INTERVAL * 10)
                latencies.append(stamps[p] - t0)

        await asyncio.gather(*(drive(p) for p in paths))
    finally:
        await reader.close()
        await writer.close()
    samples.setdefault("push" if push else "beacon", []).extend(latencies)
    return _pct(latencies, 95) * 1000


def figures(ctx: Context) -> list[dict[str, Any]]:
    rounds = min(ctx.rounds, 3) if ctx.quick else ctx.rounds
    window = 3 if ctx.quick else WINDOW
    mount = f"bench-feed-{uuid.uuid4().hex[:8]}"
    ctx.log(f"feed: seeding {N_PATHS} paths in {mount}")
    paths = ctx.runner.run(_setup(ctx, mount, N_PATHS + PATHS))
    watched, written = paths[:N_PATHS], paths[N_PATHS:]
    out: list[dict[str, Any]] = []
    try:
        notes: dict[str, Any] = {}

        def req(feed: bool) -> Any:
            return lambda: ctx.runner.run(_requests_round(ctx, mount, watched, feed, window, notes))

        values = interleave(rounds, {"beacon": req(True), "per_path": req(False)}, ctx.log, "feed")
        out.append(
            {
                "key": "feed_requests",
                "title": f"Vault requests per interval, {N_PATHS:,} watched paths",
                "description": (
                    f"HTTP requests one process sends per {INTERVAL:g} s interval while watching"
                    f" {N_PATHS:,} KV v2 paths (nothing changes), counted by its client over"
                    f" {window} intervals: the change feed's beacon vs a poll of each path"
                ),
                "unit": "requests",
                "better": "lower",
                "variants": {
                    "beacon": {"label": "beacon (change feed)", "rounds": values["beacon"]},
                    "per_path": {
                        "label": "per-path polling (feed off)",
                        "rounds": values["per_path"],
                    },
                },
                "goals": [{"label": "beacon", "variant": "beacon", "op": "<=", "value": 1.0}],
                "notes": {
                    "interval_s": INTERVAL,
                    "paths": N_PATHS,
                    "per_round": notes,
                    "full_poll_average_per_s": {
                        "default_full_poll_interval_s": 300,
                        "requests_per_s": round(N_PATHS / 300, 2),
                        "why": "each path's own slow poll (writes around us), spread out;"
                        " not inside the window measured here (full poll set to 3600 s)",
                    },
                },
            }
        )
        redis = _Redis()
        error: str | None = None
        try:
            ctx.runner.run(redis.create())
            ctx.runner.run(_push_secret(ctx, mount, redis))
        except Exception as exc:  # no Redis: the push variant cannot be measured
            error = f"Redis at 127.0.0.1:6379: {type(exc).__name__}"
        samples: dict[str, list[float]] = {}
        try:

            def lat(push: bool) -> Any:
                return lambda: ctx.runner.run(_latency_round(ctx, mount, written, push, samples))

            variants = (
                {"beacon": lat(False)} if error else {"push": lat(True), "beacon": lat(False)}
            )
            lat_values = interleave(rounds, variants, ctx.log, "feed latency")
        finally:
            if error is None:
                ctx.runner.run(redis.drop())
        push_variant: dict[str, Any] = (
            {"label": "Redis push", "rounds": [], "error": error}
            if error
            else {"label": "Redis push", "rounds": lat_values["push"]}
        )
        out.append(
            {
                "key": "feed_latency",
                "title": "Change -> callback p95, push and beacon",
                "description": (
                    f"p95 per round of the time from put_secret (write, beacon bump, publish)"
                    f" in one service to the callback in another, {PATHS} paths x {CHANGES}"
                    f" changes per round at a random phase, interval {INTERVAL:g} s"
                ),
                "unit": "ms",
                "better": "lower",
                "variants": {
                    "push": push_variant,
                    "beacon": {"label": "beacon only", "rounds": lat_values["beacon"]},
                },
                "goals": [
                    {"label": "push p95", "variant": "push", "op": "<=", "value": 100.0},
                    {
                        "label": "beacon p95",
                        "variant": "beacon",
                        "op": "<=",
                        "value": INTERVAL * 1000,
                    },
                ],
                "notes": {
                    k: {
                        "changes": len(v),
                        "p50_ms": round(_pct(v, 50) * 1000, 1),
                        "p95_ms": round(_pct(v, 95) * 1000, 1),
                        "max_ms": round(max(v) * 1000, 1),
                    }
                    for k, v in samples.items()
                    if v
                },
            }
        )
    finally:
        ctx.runner.run(_teardown(ctx, mount))
    return out


async def _push_secret(ctx: Context, mount: str, redis: _Redis) -> None:
    from maily_secrets.vault.client import VaultClient

    async with VaultClient(_settings(ctx, mount)) as c:
        await c.kv.write(
            f"{mount}/data/push",
            {
                "redis_host": "127.0.0.1",
                "redis_port": 6379,
                "redis_username": redis.user,
                "redis_password": redis.password,
            },
            cas=0,
        )
