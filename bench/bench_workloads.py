"""The measured workloads: ours (VaultService), hvac, and a bare aiohttp loop.

Every function returns one :class:`Sample` (operations and elapsed seconds) and
checks what it read (the expected keys are present) without ever keeping or
printing a secret value.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import hvac  # type: ignore[import-untyped]

from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

MOUNT = "maily"
BENCH_PREFIX = "bench"
BENCH_KEYS = frozenset({"user", "password", "port"})


class BenchError(RuntimeError):
    """A workload read something unexpected (never carries a secret value)."""


@dataclass(frozen=True, slots=True)
class Sample:
    ops: int
    seconds: float  # wall clock
    cpu: float  # CPU seconds of this process (all threads): the client's own cost
    requests: int | None = None  # HTTP requests sent, when we can count them

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu / self.ops * 1e6 if self.ops else 0.0


class Clock:
    """Wall and process CPU time from one starting point."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def sample(self, ops: int, requests: int | None = None) -> Sample:
        wall, cpu = self.wall(), time.process_time() - self.cpu0
        return Sample(ops, wall, cpu, requests)


def secret_names(n: int) -> list[str]:
    """``bench/p0000`` ... relative to the mount (hvac's view of a path)."""
    return [f"{BENCH_PREFIX}/p{i:04d}" for i in range(n)]


def _check(data: Any, what: str) -> None:
    if not isinstance(data, dict) or not BENCH_KEYS <= data.keys():
        raise BenchError(f"{what}: unexpected secret shape")


# ---------------------------------------------------------------------------- setup
async def seed(client: VaultClient, names: Sequence[str], concurrency: int = 64) -> None:
    """Create every secret once (check-and-set 0: create-only), ``concurrency`` at a time."""
    it = iter(enumerate(names))

    async def worker() -> None:
        for i, name in it:
            data = {
                "user": f"svc-{i:04d}",
                "password": secrets.token_urlsafe(18),
                "port": 5000 + i % 1000,
            }
            await client.kv.write(f"{MOUNT}/data/{name}", data, cas=0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---------------------------------------------------------------------------- A: hot reads
async def hot_ours(settings: VaultSettings, duration: float, batch: int = 5000) -> Sample:
    """``get_config()`` served from the cache: warm up once, then loop for ``duration``."""
    svc = VaultService(settings)
    try:
        for _ in range(1000):
            _ = await svc.get_config()
        before = svc.client.stats.total()
        get = svc.get_config
        n = 0
        clock = Clock()
        while clock.wall() < duration:
            for _ in range(batch):
                await get()
            n += batch
        sample = clock.sample(n, svc.client.stats.total() - before)
        _check_config(await svc.get_config(), "ours")
        return sample
    finally:
        await svc.close()


def _check_config(data: Any, what: str) -> None:
    if not isinstance(data, dict) or "db_host" not in data:
        raise BenchError(f"{what}: maily/data/config has an unexpected shape")


def hot_hvac(url: str, token: str, duration: float, batch: int = 50) -> Sample:
    """hvac's ``read_secret_version`` of the same secret: every call is an HTTP request."""
    client = hvac.Client(url=url, token=token)
    try:

        def read() -> Any:
            return client.secrets.kv.v2.read_secret_version(
                path="config", mount_point=MOUNT, raise_on_deleted_version=True
            )

        for _ in range(20):
            read()
        n = 0
        clock = Clock()
        while clock.wall() < duration:
            for _ in range(batch):
                read()
            n += batch
        sample = clock.sample(n, n)
        _check_config(read()["data"]["data"], "hvac")
        return sample
    finally:
        client.adapter.close()


# ---------------------------------------------------------------------------- B: concurrent misses
async def concurrent_ours(
    settings: VaultSettings, names: Sequence[str], concurrency: int
) -> Sample:
    """A fresh VaultService (empty cache, new pool, its own login) reads every path once."""
    clock = Clock()
    svc = VaultService(settings)
    try:
        it = iter(names)

        async def worker() -> int:
            n = 0
            for name in it:
                _check(await svc.get_secret(f"{MOUNT}/data/{name}"), "ours")
                n += 1
            return n

        counts = await asyncio.gather(*(worker() for _ in range(concurrency)))
        return clock.sample(sum(counts), svc.client.stats.total())
    finally:
        await svc.close()


def concurrent_hvac(url: str, token: str, names: Sequence[str], threads: int) -> Sample:
    """hvac from a thread pool, one ``hvac.Client`` (requests session) per thread."""
    clients = [hvac.Client(url=url, token=token) for _ in range(threads)]
    lock = threading.Lock()
    it = iter(names)

    def worker(client: Any) -> int:
        n = 0
        while True:
            with lock:
                name = next(it, None)
            if name is None:
                return n
            r = client.secrets.kv.v2.read_secret_version(
                path=name, mount_point=MOUNT, raise_on_deleted_version=True
            )
            _check(r["data"]["data"], "hvac")
            n += 1

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hvac") as pool:
            clock = Clock()
            futures = [pool.submit(worker, c) for c in clients]
            total = sum(f.result() for f in futures)
            sample = clock.sample(total, total)
        return sample
    finally:
        for c in clients:
            c.adapter.close()


async def concurrent_aiohttp(
    addr: str, token: str, names: Sequence[str], concurrency: int
) -> Sample:
    """The floor: one aiohttp session, ``concurrency`` workers, GET + JSON, nothing else."""
    clock = Clock()
    session = aiohttp.ClientSession()
    try:
        headers = {"X-Vault-Token": token}
        base = f"{addr}/v1/{MOUNT}/data/"
        it = iter(names)

        async def worker() -> int:
            n = 0
            for name in it:
                async with session.get(base + name, headers=headers) as resp:
                    if resp.status != 200:
                        raise BenchError(f"aiohttp: HTTP {resp.status} for {MOUNT}/data/{name}")
                    body = await resp.json()
                _check(body["data"]["data"], "aiohttp")
                n += 1
            return n

        counts = await asyncio.gather(*(worker() for _ in range(concurrency)))
        return clock.sample(sum(counts), sum(counts))
    finally:
        await session.close()
