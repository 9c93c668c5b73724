"""Driving one rotator by hand, the way the engine does, against the real servers.

    ctx = rotation_ctx("smtp", client, secret="config-1a2b", options={...})
    pending, version = await rotate(SmtpRotator(), ctx)     # check, create, apply, verify, promote

    app = Traffic(read_creds, works)    # an application using whatever is in Vault right now
    app.start(); await app.until_seen(key_id); ...; await app.stop()
    assert app.failed == 0

``crash_engine_run`` runs the engine in a child process that dies after a given step.
``Clock`` is an injectable ``now`` that only moves when told; ``scratch_mount`` a KV v2
mount of the caller's own that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from maily_secrets.rotation.base import RotationContext, Rotator
from maily_secrets.rotation.config import RotationConfig, TypeConfig
from maily_secrets.rotation.engine import CRASH_ENV
from maily_secrets.vault.client import VaultClient

if TYPE_CHECKING:
    from ..conftest import Bao

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2030, 1, 15, 3, 0, tzinfo=UTC)
TEST_LOGGER = "maily_secrets.rotation.test"


def hexid() -> str:
    return uuid.uuid4().hex[:8]


class Clock:
    """A ``now`` for ``RotationContext``/the engine that moves only by ``advance``."""

    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> datetime:
        self.t += timedelta(**kw)
        return self.t


def rotation_ctx(
    type_name: str,
    client: VaultClient,
    secret: str,
    *,
    options: dict[str, Any] | None = None,
    grace: timedelta | str = timedelta(hours=1),
    now: Callable[[], datetime] | None = None,
    config: Path | None = None,
    prefix: str | None = None,
    rotation_id: str | None = None,
    logger: str = TEST_LOGGER,
) -> RotationContext:
    """The context the engine would hand a rotator of ``type_name`` (environment
    ``development`` of ``config``, the default config when None; ``prefix``: its state
    prefix)."""
    env = RotationConfig.load(config).environment("development")
    if prefix:
        env.env = env.env.model_copy(update={"state_prefix": prefix})
    return RotationContext(
        env=env,
        type_name=type_name,
        type_config=TypeConfig(secret=secret, grace=grace, options=options or {}),
        client=client,
        rotation_id=rotation_id or f"test-{hexid()}",
        log=logging.getLogger(logger),
        **({"now": now} if now else {}),
    )


async def rotate(rot: Rotator, ctx: RotationContext) -> tuple[dict[str, Any], int]:
    """One full rotation, step by step (what the engine does): (pending, new version)."""
    await rot.check(ctx)
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)
    return pending, await rot.promote(ctx, pending)


@asynccontextmanager
async def scratch_mount(bao: Bao, prefix: str) -> AsyncIterator[str]:
    """A KV v2 mount of the caller's own (``<prefix>-<hex>``), deleted on exit."""
    m = f"{prefix}-{hexid()}"
    async with bao.client() as c:
        await c.write(f"sys/mounts/{m}", {"type": "kv", "options": {"version": "2"}})
        await c.kv.configure(m)
        yield m
        await c.delete(f"sys/mounts/{m}")


class Traffic:
    """An application: every call uses whatever credentials are in Vault at that moment.

    ``seen`` records ``creds[part]`` of each call (only its last ``tail`` characters when
    given: enough to tell passwords apart without keeping them).
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[tuple[str, str]]],
        call: Callable[[tuple[str, str]], bool],
        *,
        part: int = 0,
        tail: int | None = None,
    ) -> None:
        self.read, self.call = read, call
        self.part, self.tail = part, tail
        self.ok = self.failed = 0
        self.seen: list[str] = []
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()  # set after every call
        self._task: asyncio.Task[None] | None = None

    def _mark(self, value: str) -> str:
        return value[-self.tail :] if self.tail else value

    async def _run(self) -> None:
        while not self._stop.is_set():
            creds = await self.read()
            if await asyncio.to_thread(self.call, creds):
                self.ok += 1
            else:
                self.failed += 1
            self.seen.append(self._mark(creds[self.part]))
            self._progress.set()
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def until_seen(self, value: str, times: int = 3, within: float = 20) -> None:
        async with asyncio.timeout(within):
            while self.seen.count(self._mark(value)) < times:
                self._progress.clear()
                await self._progress.wait()

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log record, all its fields, as one searchable text."""
    return "\n".join(json.dumps(r.__dict__, default=str) for r in caplog.records)


_CHILD = """
import asyncio, sys
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine

async def main() -> None:
    engine = RotationEngine(RotationConfig.load(sys.argv[1]), "development")
    try:
        await engine.run([sys.argv[2]], force=True)
    finally:
        await engine.close()

asyncio.run(main())
"""


def crash_engine_run(
    bao: Bao, config: Path, type_name: str, step: str
) -> subprocess.CompletedProcess[str]:
    """A forced engine run of ``type_name`` in a child process that dies (exit 70) right
    after ``step``, as a killed pod would; token auth against ``bao``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "VAULT_AUTH_METHOD": "token",
        CRASH_ENV: step,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), type_name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
