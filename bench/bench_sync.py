"""Sync API benchmark: cached ``get_config()`` from 16 threads, served in the calling
thread (the fresh-hit path) versus submitted to the background loop for every call,
on a private OpenBao dev server. Rounds interleave the two variants.

    .venv/bin/python bench/bench_sync.py              # 5 rounds, 16 threads x 500 reads
    .venv/bin/python bench/bench_sync.py --rounds 9

Prints reads/s per round and the median and range of each variant. The token and the
values read are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from maily_secrets.dev.bootstrap import bootstrap_dev
from maily_secrets.dev.server import DevServer
from maily_secrets.settings import VaultSettings
from maily_secrets.sync import SyncVaultService
from maily_secrets.vault.client import VaultClient


def rate(settings: VaultSettings, threads: int, reads: int) -> float:
    svc = SyncVaultService(settings)
    try:
        svc.get_config()  # cached from here on

        def worker() -> None:
            for _ in range(reads):
                svc.get_config()

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        start = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return threads * reads / (time.perf_counter() - start)
    finally:
        svc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--reads", type=int, default=500, help="reads per thread")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-sync-"))  # ours: removed at the end
    server = DevServer(state)
    info, _ = server.start(port=0)
    settings = VaultSettings(addr=info.addr, token=info.token(), auth_method="token")

    async def boot() -> None:
        async with VaultClient(settings) as c:
            await bootstrap_dev(c)

    asyncio.run(boot())
    in_thread = SyncVaultService._fresh

    def via_loop(self: SyncVaultService, path: str | None) -> None:
        self._check()
        return None

    variants: dict[str, Callable[..., object]] = {"in-thread hit": in_thread, "via loop": via_loop}
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for r in range(args.rounds):
            for name, fresh in variants.items():
                SyncVaultService._fresh = fresh  # type: ignore[method-assign]
                results[name].append(rate(settings, args.threads, args.reads))
            print(f"round {r}: " + "; ".join(f"{n} {v[-1]:,.0f}/s" for n, v in results.items()))
    finally:
        SyncVaultService._fresh = in_thread  # type: ignore[method-assign]
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    for name, v in results.items():
        med = statistics.median(v)
        print(f"{name}: median {med:,.0f} reads/s, range {min(v):,.0f}-{max(v):,.0f}")


if __name__ == "__main__":
    main()
