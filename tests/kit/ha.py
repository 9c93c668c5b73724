"""Reading through a cluster while the test breaks it.

async with ReadLoop(service, path, expect={"k": "v"}) as reads:
    await asyncio.sleep(0.5)
    cluster.kill(leader)
    reads.killed()                      # later reads count as "... after kill"
reads.tally     # Counter: "ok before kill", "ok after kill", "failed after kill: ..."
reads.latencies # seconds per read
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import TracebackType
from typing import Any

from maily_secrets.errors import VaultError
from maily_secrets.service import VaultService


class ReadLoop:
    """``service.get_secret(path)`` in a loop (every 5 ms) until the block ends; each read
    tallied as ok, wrong (not ``expect``) or failed (the error's type and status), before or
    after :meth:`killed`."""

    def __init__(self, service: VaultService, path: str, expect: Any) -> None:
        self.service, self.path, self.expect = service, path, expect
        self.tally: Counter[str] = Counter()
        self.latencies: list[float] = []
        self._stop, self._killed = asyncio.Event(), asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def killed(self) -> None:
        self._killed.set()

    async def _run(self) -> None:
        while not self._stop.is_set():
            phase = "after kill" if self._killed.is_set() else "before kill"
            t0 = time.perf_counter()
            try:
                value = await self.service.get_secret(self.path)
            except VaultError as exc:
                self.tally[f"failed {phase}: {type(exc).__name__} {exc.status}"] += 1
            else:
                ok = value == self.expect
                self.tally[f"ok {phase}" if ok else f"wrong {phase}"] += 1
            self.latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> ReadLoop:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)
