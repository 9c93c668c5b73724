"""Listener latency and cost: change -> callback at a 1 s poll interval.

    .venv/bin/python bench/bench_listeners.py [--quick]

Writes N changes (spread over several secrets, each with its own watcher, so that
the run takes seconds, not minutes) and measures, for each, the time from the
write's return to the callback. With polling every ``interval`` seconds the
expected latency is uniform on [0, interval]: p50 about interval/2. Also counts
the HTTP requests one idle watcher makes per interval (goal: 1, a metadata read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from maily_secrets.dev.bootstrap import bootstrap_dev
from maily_secrets.dev.server import DevServer
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

HERE = Path(__file__).resolve().parent


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


async def measure(
    addr: str, token: str, changes: int, interval: float, idle: float
) -> dict[str, Any]:
    settings = VaultSettings(
        addr=addr, token=token, auth_method="token", listener_interval=interval
    )
    paths = [f"maily/data/bench-listen-{i}" for i in range(10)]
    per_path = max(1, changes // len(paths))
    latencies: list[float] = []
    async with VaultClient(settings) as root:
        await bootstrap_dev(root)
        for p in paths:
            await root.kv.write(p, {"n": 0}, cas=0)
        svc = VaultService(settings)
        try:

            async def drive(path: str) -> None:
                got = asyncio.Event()
                stamp: dict[str, float] = {}

                async def cb(value: dict[str, Any]) -> None:
                    stamp["t"] = time.perf_counter()
                    got.set()

                await svc.register_secret_listener(path, cb)
                for n in range(1, per_path + 1):
                    # a change lands at a random phase of the poll cycle, as in real life
                    await asyncio.sleep(random.uniform(0, interval))
                    got.clear()
                    await root.kv.write(path, {"n": n}, cas=n)
                    t0 = time.perf_counter()
                    await asyncio.wait_for(got.wait(), interval * 10)
                    latencies.append(stamp["t"] - t0)

            await asyncio.gather(*(drive(p) for p in paths))
            # one idle watcher: requests per interval
            before = sum(svc.client.stats.values())
            await asyncio.sleep(idle)
            idle_requests = sum(svc.client.stats.values()) - before
        finally:
            await svc.close()
    watchers = len(paths)
    return {
        "interval_s": interval,
        "changes": len(latencies),
        "latency_p50_s": round(pct(latencies, 50), 3),
        "latency_p95_s": round(pct(latencies, 95), 3),
        "latency_max_s": round(max(latencies), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "idle_requests_per_watcher_per_interval": round(
            idle_requests / watchers / (idle / interval), 2
        ),
    }


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-listen-") as d:
        server = DevServer(Path(d) / "bao")
        info, _ = server.start(port=0)
        try:
            return asyncio.run(
                measure(info.addr, info.token(), 20 if quick else 60, 1.0, 3.0 if quick else 10.0)
            )
        finally:
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    res = run(args.quick)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "listeners.json").write_text(json.dumps(res, indent=2))
    print(f"Listener: change -> callback at a {res['interval_s']:.0f} s poll interval")
    print(f"  changes measured        {res['changes']}")
    print(
        f"  p50 / p95 / max         {res['latency_p50_s']} s / {res['latency_p95_s']} s"
        f" / {res['latency_max_s']} s  (expected ~interval/2 / ~0.95*interval)"
    )
    print(
        f"  idle requests per watcher per interval: "
        f"{res['idle_requests_per_watcher_per_interval']} (goal: 1)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
