"""Cost of the Prometheus observer on the hot path: a cached ``get_secret()`` with no
observer versus with ``ServiceMetrics`` (its own registry), on a private OpenBao dev
server. Rounds interleave the two variants.

    .venv/bin/python bench/bench_metrics.py              # 7 rounds x 200,000 hits
    .venv/bin/python bench/bench_metrics.py --rounds 9 --reads 100000

Prints microseconds per cache hit for each round, then the median and range of each
variant. The token and the values read are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from maily_secrets.dev.bootstrap import bootstrap_dev
from maily_secrets.dev.server import DevServer
from maily_secrets.metrics import ServiceMetrics
from maily_secrets.paths import KV2Path
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient


async def measure(settings: VaultSettings, rounds: int, reads: int) -> dict[str, list[float]]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with VaultClient(settings) as c:
        await bootstrap_dev(c)
        await c.kv.write(KV2Path("maily", name), {"a": "1"}, cas=0)
    path = f"maily/data/{name}"
    variants = {
        "no observer": VaultService(settings),
        "ServiceMetrics": VaultService(settings, observer=ServiceMetrics(CollectorRegistry())),
    }
    results: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for svc in variants.values():
            await svc.get_secret(path)  # cached from here on
        for r in range(rounds):
            for label, svc in variants.items():
                start = time.perf_counter()
                for _ in range(reads):
                    await svc.get_secret(path)
                results[label].append((time.perf_counter() - start) / reads * 1e6)
            print(f"round {r}: " + "; ".join(f"{k} {v[-1]:.2f} us" for k, v in results.items()))
    finally:
        for svc in variants.values():
            await svc.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reads", type=int, default=200_000, help="cache hits per round")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-metrics-"))  # ours: removed at the end
    server = DevServer(state)
    info, _ = server.start(port=0)
    settings = VaultSettings(addr=info.addr, token=info.token(), auth_method="token")
    try:
        results = asyncio.run(measure(settings, args.rounds, args.reads))
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    for label, v in results.items():
        med = statistics.median(v)
        print(f"{label}: median {med:.2f} us per cache hit, range {min(v):.2f}-{max(v):.2f}")


if __name__ == "__main__":
    main()
