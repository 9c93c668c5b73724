"""A load through an adapter while a type rotates and retires (``make demo``, the bench).

Never imported by the runtime. ``QueryLoad`` runs ``workers`` tasks calling ``op`` (one
operation: a query through a pool, a Redis command...) and counts what succeeded, per
login role when ``op`` returns it, and what failed (error type names only: never a
value). ``rotate_cli`` runs ``mailyctl secrets rotate`` in a child process, as an
operator or the CronJob does; ``retire_due`` runs the engine's ``--due`` pass with its
clock moved past the grace, which retires the previous credential without waiting for
the grace to pass in real time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..rotation.config import RotationConfig
from ..rotation.engine import RotationEngine
from ..vault.client import VaultClient

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # error type -> count
    users: Counter[str] = field(default_factory=Counter)  # login role -> operations

    @property
    def total(self) -> int:
        return self.ok + self.failed


class QueryLoad:
    """``workers`` tasks calling ``op()`` in a loop until :meth:`stop`."""

    def __init__(self, op: Callable[[], Awaitable[str | None]], *, workers: int = 8) -> None:
        self.op = op
        self.workers = workers
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = 0.0
        self.elapsed = 0.0

    async def _worker(self) -> None:
        t = self.tally
        while not self._stop.is_set():
            try:
                user = await self.op()
            except Exception as exc:
                t.failed += 1
                t.errors[type(exc).__name__] += 1
            else:
                t.ok += 1
                if user:
                    t.users[user] += 1
            await asyncio.sleep(0)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> Tally:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self.elapsed = time.perf_counter() - self.started
        return self.tally

    @property
    def rate(self) -> float:
        elapsed = self.elapsed or (time.perf_counter() - self.started)
        return self.tally.ok / elapsed if elapsed > 0 else 0.0


async def until(check: Callable[[], bool], within: float, step: float = 0.02) -> bool:
    """Poll ``check`` until it holds (True) or ``within`` seconds passed (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def rotate_cli(
    types: str, *flags: str, env: Mapping[str, str] | None = None, within: float = 120
) -> list[dict[str, Any]]:
    """``mailyctl secrets rotate --secret-types <types> --json [flags]``: the results per
    type.

    ``env`` (default: ours) carries the token and ``MAILY_ROTATION_CONFIG``; never argv."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO_ROOT / "mailyctl.py"),
        "secrets",
        "rotate",
        f"--secret-types={types}",
        "--json",
        *flags,
        env=dict(env) if env is not None else None,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    try:
        results = json.loads(out)["results"]
    except (ValueError, KeyError):
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"rotate exited {proc.returncode}: {' / '.join(tail)}") from None
    return [dict(r) for r in results]


async def retire_due(
    config_file: Path | str,
    client: VaultClient,
    types: list[str],
    *,
    past: timedelta,
    env_name: str | None = None,
    within: float = 15.0,
    step: float = 0.25,
) -> list[str]:
    """The engine's ``--due`` pass at ``now + past`` (past the grace): the notes of what
    it retired (it rotates nothing that is not due).

    As ``--wait-retire`` does, the pass is made again every ``step`` s (at most
    ``within`` s) while the policy still waits for users of a previous credential: an
    adapter that has just closed its old connections still has them listed by the
    target for a moment (a PostgreSQL backend leaves ``pg_stat_activity`` when it has
    finished exiting). The last pass's notes are returned, whatever it decided."""
    later = datetime.now(UTC) + past
    engine = RotationEngine(
        RotationConfig.load(Path(config_file)), env_name, client=client, now=lambda: later
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        report = await engine.run(types, due_only=True)
        waiting = any(d.get("action") == "wait" for r in report.results for d in r.retirement)
        if not waiting or loop.time() >= deadline:
            return [n for r in report.results for n in r.notes]
        await asyncio.sleep(step)
