"""Cold reads: every read a miss, 64 distinct KV v2 paths, at concurrency 1, 16 and 64.

Four variants per concurrency N, measured round by round in a rotating order:

- ``ours``: one ``VaultService`` (the public API: ``get_secret("maily/data/...")``), N
  tasks.  Each round reads every path ``passes`` times; ``invalidate()`` (the whole cache)
  before each pass makes every read a real miss of an absent entry, on a warm connection
  pool, exactly what a service pays when an entry is not cached.  Old and new code have
  both calls.
- ``aiohttp``: the floor, one ``ClientSession``, N tasks, GET + ``json()`` and nothing else.
- ``async-hvac``: one ``AsyncClient``, N tasks, ``read("maily/data/...")``.
- ``hvac``: N threads, one ``hvac.Client`` (a requests session) each,
  ``read_secret_version``.

Every variant reads the same 64 paths per pass, split the same way (worker ``j`` reads
paths ``j, j + N, ...``), and waits for the pass to end before the next one (for threads,
a barrier), so no two reads of one path are ever in flight together (no request can be
saved by joining another).  Clients, sessions and threads' clients live across rounds
(warm connections); every variant is warmed up before the first round.  Each read is
checked (the expected keys are present); no value is kept or printed.

Figures: reads/s per round (wall) and the client's CPU µs per read (``process_time`` of
the whole process, all threads; the server's CPU is not counted).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import async_hvac  # type: ignore[import-untyped]
import hvac  # type: ignore[import-untyped]
from bench_context import Context, interleave
from pydantic import SecretStr

MOUNT = "maily"
PREFIX = "bench-cold"
PATHS = 64
KEYS = frozenset({"user", "password", "port"})
CONCURRENCY = (1, 16, 64)
GOALS = (("aiohttp", 0.95), ("async_hvac", 1.0), ("hvac", 3.0))


class ColdReadError(RuntimeError):
    """A read returned something unexpected (the message never holds a value)."""


def _check(data: Any, who: str) -> None:
    if not isinstance(data, dict) or not KEYS <= data.keys():
        raise ColdReadError(f"{who}: a secret without the expected keys")


def names() -> list[str]:
    """Paths relative to the mount (hvac's view): ``bench-cold/p00`` ..."""
    return [f"{PREFIX}/p{i:02d}" for i in range(PATHS)]


def split(items: Sequence[str], n: int) -> list[list[str]]:
    """Worker ``j`` of ``n`` gets items ``j, j + n, ...`` (the same split for every variant)."""
    return [list(items[j::n]) for j in range(min(n, len(items)))]


async def seed(addr: str, token: str) -> None:
    """Create the 64 secrets (check-and-set 0: create only), through the HTTP API."""
    headers = {"X-Vault-Token": token}
    async with aiohttp.ClientSession() as s:
        for i, name in enumerate(names()):
            body = {
                "options": {"cas": 0},
                "data": {"user": f"svc-{i:02d}", "password": f"bench-{i:02d}", "port": 5000 + i},
            }
            for attempt in range(50):  # a fresh mount answers 400 "Upgrading..." for a moment
                async with s.post(
                    f"{addr}/v1/{MOUNT}/data/{name}", json=body, headers=headers
                ) as r:
                    if r.status == 200:
                        break
                    if r.status == 400 and "check-and-set" in await r.text():
                        break  # already there (a rerun on the same server)
                    if attempt == 49:
                        raise ColdReadError(f"seeding {MOUNT}/data/{name}: HTTP {r.status}")
                await asyncio.sleep(0.1)


class Rate:
    """Wall and process CPU of one round."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def done(self, reads: int) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        return reads / wall, cpu / reads * 1e6


AsyncRead = Callable[[str], Awaitable[None]]


async def _passes(
    read: AsyncRead, chunks: list[list[str]], passes: int, before_pass: Callable[[], None]
) -> int:
    async def worker(chunk: list[str]) -> int:
        for name in chunk:
            await read(name)
        return len(chunk)

    n = 0
    for _ in range(passes):
        before_pass()
        n += sum(await asyncio.gather(*(worker(c) for c in chunks)))
    return n


def _nothing() -> None:
    pass


class Variants:
    """The four clients of one concurrency, alive across rounds; ``close()`` at the end."""

    def __init__(self, ctx: Context, concurrency: int, passes: int) -> None:
        self.ctx = ctx
        self.n = concurrency
        self.passes = passes
        self.chunks = split(names(), concurrency)
        self.cpu: dict[str, list[float]] = {}
        self.requests: list[int] = []
        run = ctx.runner.run
        run(self._open())
        self.hvac_clients = [
            hvac.Client(url=ctx.addr, token=ctx.token) for _ in range(len(self.chunks))
        ]

    async def _open(self) -> None:
        from maily_secrets.service import VaultService
        from maily_secrets.settings import VaultSettings

        settings = VaultSettings(
            addr=self.ctx.addr,
            token=SecretStr(self.ctx.token),
            auth_method="token",
            snapshot_path=None,
        )
        self.svc = VaultService(settings)
        self.session = aiohttp.ClientSession()
        self.ah = async_hvac.AsyncClient(url=self.ctx.addr, token=self.ctx.token)

    async def _close(self) -> None:
        await self.svc.close()
        await self.session.close()
        await self.ah.close()

    def close(self) -> None:
        self.ctx.runner.run(self._close())
        for c in self.hvac_clients:
            c.adapter.close()

    # ------------------------------------------------------------------ the variants
    def _timed(self, key: str, body: Callable[[], int]) -> float:
        rate = Rate()
        reads = body()
        per_s, cpu = rate.done(reads)
        if reads != PATHS * self.passes:
            raise ColdReadError(f"{key}: {reads} reads, expected {PATHS * self.passes}")
        self.cpu.setdefault(key, []).append(cpu)
        return per_s

    def ours(self) -> float:
        svc = self.svc
        get = svc.get_secret
        base = f"{MOUNT}/data/"

        async def read(name: str) -> None:
            _check(await get(base + name), "ours")

        def invalidate() -> None:
            svc.invalidate()

        stats = getattr(svc.client, "stats", None)
        before = stats.total() if stats is not None else None
        value = self._timed(
            "ours",
            lambda: self.ctx.runner.run(_passes(read, self.chunks, self.passes, invalidate)),
        )
        if stats is not None and before is not None:
            self.requests.append(stats.total() - before)
        return value

    def aiohttp(self) -> float:
        session = self.session
        headers = {"X-Vault-Token": self.ctx.token}
        base = f"{self.ctx.addr}/v1/{MOUNT}/data/"

        async def read(name: str) -> None:
            async with session.get(base + name, headers=headers) as r:
                if r.status != 200:
                    raise ColdReadError(f"aiohttp: HTTP {r.status}")
                body = await r.json()
            _check(body["data"]["data"], "aiohttp")

        return self._timed(
            "aiohttp",
            lambda: self.ctx.runner.run(_passes(read, self.chunks, self.passes, _nothing)),
        )

    def async_hvac(self) -> float:
        client = self.ah
        base = f"{MOUNT}/data/"

        async def read(name: str) -> None:
            r = await client.read(base + name)
            _check(r["data"]["data"], "async-hvac")

        return self._timed(
            "async_hvac",
            lambda: self.ctx.runner.run(_passes(read, self.chunks, self.passes, _nothing)),
        )

    def hvac(self) -> float:
        return self._timed("hvac", self._hvac_round)

    def _hvac_round(self) -> int:
        barrier = threading.Barrier(len(self.chunks))
        counts = [0] * len(self.chunks)
        errors: list[BaseException] = []

        def worker(j: int) -> None:
            kv = self.hvac_clients[j].secrets.kv.v2
            chunk = self.chunks[j]
            try:
                for _ in range(self.passes):
                    for name in chunk:
                        r = kv.read_secret_version(
                            path=name, mount_point=MOUNT, raise_on_deleted_version=True
                        )
                        _check(r["data"]["data"], "hvac")
                        counts[j] += 1
                    barrier.wait()
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [
            threading.Thread(target=worker, args=(j,), name=f"hvac-{j}")
            for j in range(len(self.chunks))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            first = next(
                (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
            )
            raise ColdReadError(f"hvac: {type(first).__name__}") from first
        return sum(counts)


def figures(ctx: Context) -> list[dict[str, Any]]:
    ctx.runner.run(seed(ctx.addr, ctx.token))
    passes = 3 if ctx.quick else 8
    out: list[dict[str, Any]] = []
    for n in CONCURRENCY:
        v = Variants(ctx, n, passes)
        try:
            measured: dict[str, Callable[[], float]] = {
                "ours": v.ours,
                "aiohttp": v.aiohttp,
                "async_hvac": v.async_hvac,
                "hvac": v.hvac,
            }
            saved, v.passes = v.passes, 1
            for fn in measured.values():  # warm-up: connections, imports, first login
                fn()
            v.passes = saved
            v.cpu.clear()
            v.requests.clear()
            rounds = interleave(ctx.rounds, measured, ctx.log, f"cold x{n}")
        finally:
            v.close()
        labels = {
            "ours": f"VaultService.get_secret, {n} tasks",
            "aiohttp": f"bare aiohttp, one session, {n} tasks",
            "async_hvac": f"async-hvac AsyncClient.read, {n} tasks",
            "hvac": f"hvac, {n} thread(s), one client each",
        }
        out.append(
            {
                "key": f"cold_reads_c{n}",
                "title": f"Cold reads, concurrency {n}",
                "description": (
                    f"{PATHS} distinct KV v2 paths, each read {passes} times per round, every"
                    f" read a miss (ours: invalidate() before each pass), {n} concurrent"
                    " readers; reads/s (wall)"
                ),
                "unit": "reads/s",
                "better": "higher",
                "variants": {
                    k: {"label": labels[k], "rounds": rounds[k], "cpu_us_per_op": v.cpu[k]}
                    for k in measured
                },
                "goals": [
                    {
                        "label": f"ours / {peer}",
                        "num": "ours",
                        "den": peer,
                        "op": ">=",
                        "value": goal,
                    }
                    for peer, goal in GOALS
                ],
                "notes": {
                    "reads_per_round": PATHS * passes,
                    "http_requests_per_round_ours": v.requests,
                },
            }
        )
    return out
