"""Listener registration: 100 and 1,000 listeners on distinct paths, at a 1 s poll interval.

    bench/.venv/bin/python bench/run.py --only registration [--quick] [--root DIR]

Each round builds a fresh ``VaultService`` (its first request made before the clock
starts, so its connection and token check are not counted), then registers one listener
on each of N distinct seeded KV v2 paths through the public
``register_secret_listener``, and stops the clock when the last registration returned.
Two ways to register: one after the other (``await`` in a loop) and all at once
(``asyncio.gather``). Rounds of 100 and 1,000 are interleaved.

Goal: linear, ``t(1000) <= 1.5 x 10 x t(100)``. With a 1 s interval every watcher
registered polls one second after its baseline: a registration of 1,000 paths that
takes longer than that competes with the polls of the paths it registered first.
A round that reaches ``CAP_S`` is stopped there (its figure is then a lower bound,
listed in the notes). The notes give the HTTP requests sent during each timed
registration (baselines and polls), where the measured code counts them
(``client.stats``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench_context import Context, interleave

INTERVAL = 1.0
SIZES = (100, 1000)
CAP_S = 20.0  # a round stops there (the old code took up to 110 s under load)


def _requests(svc: Any) -> int | None:
    stats = getattr(svc.client, "stats", None)
    return None if stats is None else int(sum(stats.values()))


async def _seed(ctx: Context, prefix: str, n: int) -> list[str]:
    from maily_secrets.settings import VaultSettings
    from maily_secrets.vault.client import VaultClient

    paths = [f"maily/data/{prefix}-{i}" for i in range(n)]
    settings = VaultSettings(addr=ctx.addr, token=ctx.token, auth_method="token")
    async with VaultClient(settings) as c:
        sem = asyncio.Semaphore(16)

        async def one(i: int, p: str) -> None:
            async with sem:
                await c.kv.write(p, {"n": i}, cas=0)  # new paths of this run's own

        await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    return paths


async def _register(
    ctx: Context,
    paths: list[str],
    warm: str,
    concurrent: bool,
    requests: list[int | None],
    capped: list[int],
) -> float:
    from maily_secrets.service import VaultService
    from maily_secrets.settings import VaultSettings

    settings = VaultSettings(
        addr=ctx.addr, token=ctx.token, auth_method="token", listener_interval=INTERVAL
    )
    svc = VaultService(settings)

    def cb(value: dict[str, Any]) -> None:
        pass

    try:
        await svc.get_secret(warm)  # connection and token check, outside the clock
        before = _requests(svc)

        async def register() -> None:
            if concurrent:
                await asyncio.gather(*(svc.register_secret_listener(p, cb) for p in paths))
            else:
                for p in paths:
                    await svc.register_secret_listener(p, cb)

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(register(), CAP_S)
        except TimeoutError:
            capped.append(len(paths))  # this round's figure is a lower bound
        elapsed = time.perf_counter() - t0
        after = _requests(svc)
        requests.append(None if before is None or after is None else after - before)
    finally:
        await svc.close()
    return elapsed * 1000


def figures(ctx: Context) -> list[dict[str, Any]]:
    rounds = min(ctx.rounds, 3) if ctx.quick else ctx.rounds
    prefix = f"bench-reg-{uuid.uuid4().hex[:6]}"
    ctx.log(f"registration: seeding {max(SIZES)} paths")
    paths = ctx.runner.run(_seed(ctx, prefix, max(SIZES) + 1))
    warm, paths = paths[-1], paths[:-1]
    out: list[dict[str, Any]] = []
    for concurrent in (False, True):
        how = "asyncio.gather" if concurrent else "one after the other"
        key = "listener_registration" + ("_concurrent" if concurrent else "")
        requests: dict[str, list[int | None]] = {f"n{n}": [] for n in SIZES}
        capped: list[int] = []

        def variant(
            n: int, concurrent: bool = concurrent, counts: Any = requests, cut: Any = capped
        ) -> Any:
            return lambda: ctx.runner.run(
                _register(ctx, paths[:n], warm, concurrent, counts[f"n{n}"], cut)
            )

        values = interleave(rounds, {f"n{n}": variant(n) for n in SIZES}, ctx.log, key)
        out.append(
            {
                "key": key,
                "title": f"Listener registration ({how})",
                "description": (
                    f"wall time to register one listener on each of N distinct seeded KV v2"
                    f" paths ({how}), interval {INTERVAL:g} s, a fresh VaultService per round"
                ),
                "unit": "ms",
                "better": "lower",
                "variants": {
                    f"n{n}": {"label": f"{n:,} listeners", "rounds": values[f"n{n}"]} for n in SIZES
                },
                "goals": [
                    {
                        "label": "1,000 / (10 x 100)",
                        "num": "n1000",
                        "den": "n100",
                        "op": "<=",
                        "value": 1.5,
                        "scale": 10,
                    }
                ],
                "notes": {
                    "interval_s": INTERVAL,
                    "http_requests_during_registration": requests,
                    "rounds_stopped_at_cap": {"cap_s": CAP_S, "sizes": capped},
                },
            }
        )
    return out
