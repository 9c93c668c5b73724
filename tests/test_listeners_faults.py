"""Secret listeners under faults, against a real OpenBao, driven by a ManualClock.

Outages of any length, bugs in the loop, callbacks that block forever, and
reads that race with writes. No test here waits on real time to pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.callbacks import STUCK_AFTER
from maily_secrets.clock import ManualClock, settle
from maily_secrets.errors import VaultError
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive, until
from .kit.listeners import LISTENER_INTERVAL, new_secret, service
from .netfault import TcpProxy
from .secrecy import assert_absent

INTERVAL = LISTENER_INTERVAL  # seconds of the ManualClock between polls
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- outages
async def test_watcher_survives_5000_failed_polls_then_fires_on_the_next_change(
    bao: Bao, root: VaultClient
) -> None:
    """2.0 ** failures overflowed at 1,024 failed polls and ended the watcher silently."""
    path = await new_secret(root, {"v": 0})
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    clock = ManualClock()
    svc = service(bao, clock, addr=proxy.addr, max_retries=0)
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener(path, got.append)
        watcher = svc._listeners.watchers[path]
        await proxy.down()  # nothing listens on the address any more: connection refused
        started = time.monotonic()
        await drive(clock, lambda: watcher._failures >= 5000, within=60, what="5000 polls")
        outage_s = time.monotonic() - started
        assert watcher._task is not None and not watcher._task.done()
        await root.kv.write(path, {"v": 1}, cas=1)  # changed during the outage
        await proxy.up()  # the same address answers again
        await drive(clock, lambda: got == [{"v": 1}], within=30, what="callback after outage")
        assert watcher._failures == 0
        assert watcher.crashes == 0
        # backoff was capped: the last failed polls were MAX_BACKOFF_FACTOR intervals apart
        assert clock.monotonic() - 1_000 < 5000 * INTERVAL * 8 * 1.1 + 100
    finally:
        await svc.close()
        await proxy.down()
    print(f"5000 failed polls in {outage_s:.1f}s real time")


async def test_watcher_logs_an_unexpected_error_restarts_and_still_fires(
    bao: Bao, root: VaultClient, caplog: pytest.LogCaptureFixture
) -> None:
    path = await new_secret(root, {"v": 0})
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[dict[str, Any]] = []
    bugs = {"left": 3}
    try:
        await svc.register_secret_listener(path, got.append)
        watcher = svc._listeners.watchers[path]
        real_poll = watcher.poll_once

        async def buggy_poll() -> None:
            if bugs["left"] > 0:
                bugs["left"] -= 1
                raise KeyError("a bug in the poll, not a Vault error")
            await real_poll()

        watcher.poll_once = buggy_poll  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="maily_secrets.listeners"):
            await drive(clock, lambda: bugs["left"] == 0 and watcher.crashes == 3)
        crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
        assert len(crashes) == 3 and all(path in r.getMessage() for r in crashes)
        await root.kv.write(path, {"v": 1}, cas=1)
        await drive(clock, lambda: got == [{"v": 1}], what="callback after restarts")
    finally:
        await svc.close()


# ---------------------------------------------------------------------------- callbacks
SCRIPT = textwrap.dedent(
    """
    import asyncio, threading, time
    from maily_secrets.service import VaultService

    PATH = {path!r}

    async def main() -> None:
        svc = VaultService()  # VAULT_ADDR / VAULT_TOKEN from the environment
        started, never = threading.Event(), threading.Event()

        def blocked(value):
            started.set()
            never.wait()  # blocks forever

        await svc.register_secret_listener(PATH, blocked)
        await svc.put_secret(PATH, {{"v": 1}}, cas=1)  # notifies at once
        while not started.is_set():
            await asyncio.sleep(0.01)
        await svc.close()
        print("closed", time.monotonic(), flush=True)

    asyncio.run(main())
    """
)


def test_a_callback_blocked_forever_does_not_keep_the_process_alive_after_close(
    bao: Bao, tmp_path: Path
) -> None:
    async def make() -> str:
        async with bao.client() as c:
            return await new_secret(c, {"v": 0})

    path = asyncio.run(make())
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,  # the environment, never argv
        "MAILY_SECRETS_LISTENER_INTERVAL": "3600",
    }
    script = tmp_path / "blocked_callback.py"
    script.write_text(SCRIPT.format(path=path))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process did not exit within 60 s after close()") from None
    exited = time.monotonic()
    assert proc.returncode == 0, err[-2000:]
    closed_at = float(out.split()[-1])
    print(f"exit {exited - closed_at:.2f}s after close()")


async def test_blocked_callbacks_do_not_starve_other_paths_callbacks(
    bao: Bao, root: VaultClient
) -> None:
    """As many callbacks blocked as the default executor has threads (6 on 2 cores)."""
    blockers = min(16, min(32, (os.cpu_count() or 1) + 4))
    stuck_path, other_path = await new_secret(root, {"v": 0}), await new_secret(root, {"v": 0})
    clock = ManualClock()
    svc = service(bao, clock)
    release = threading.Event()
    lock = threading.Lock()
    running = {"n": 0}
    got: list[dict[str, Any]] = []
    other_done = threading.Event()

    def blocked(value: dict[str, Any]) -> None:
        with lock:
            running["n"] += 1
        release.wait(60)

    def other(value: dict[str, Any]) -> None:
        got.append(value)
        other_done.set()

    try:
        for _ in range(blockers):
            await svc.register_secret_listener(stuck_path, blocked)
        await svc.register_secret_listener(other_path, other)
        await svc.put_secret(stuck_path, {"v": 1}, cas=1)
        await until(lambda: running["n"] >= min(blockers, 4))  # the pool's bound is 4
        await svc.put_secret(other_path, {"v": 1}, cas=1)
        await settle()  # every runner's timer starts counting
        # The blocked calls stop counting against the pool once they ran STUCK_AFTER.
        await clock.advance(STUCK_AFTER + 0.1)
        await until(other_done.is_set, within=10, what="the other path's callback")
        assert got == [{"v": 1}]
        await until(lambda: running["n"] == blockers, within=10, what="every blocked callback")
        assert svc._listeners.executor.threads <= svc._listeners.executor.max_threads
    finally:
        release.set()
        await svc.close()


async def test_callback_timeout_warns_naming_path_and_callback_but_not_the_value(
    bao: Bao, root: VaultClient, caplog: pytest.LogCaptureFixture
) -> None:
    path = await new_secret(root, {"v": 0})
    canary = "canary-" + uuid.uuid4().hex
    clock = ManualClock()
    svc = service(bao, clock)
    release = threading.Event()
    entered = threading.Event()
    finished: list[str] = []

    def slow_reload(value: dict[str, Any]) -> None:
        entered.set()
        release.wait(30)
        finished.append(value["token"])

    fast: list[Any] = []
    try:
        await svc._listeners.register(path, slow_reload, timeout=2.0)
        await svc._listeners.register(path, fast.append, timeout=2.0)
        with caplog.at_level(logging.WARNING, logger="maily_secrets.listeners"):
            await svc.put_secret(path, {"token": canary}, cas=1)
            await until(entered.is_set)
            await settle()  # the runner's timer starts counting
            await clock.advance(1.9)
            assert not [r for r in caplog.records if "still running" in r.getMessage()]
            await clock.advance(0.2)
            slow = [r for r in caplog.records if "still running" in r.getMessage()]
        assert len(slow) == 1
        assert path in slow[0].getMessage() and "slow_reload" in slow[0].getMessage()
        assert getattr(slow[0], "callback", "").endswith("slow_reload")
        runners = svc._listeners.watchers[path].runners
        assert runners[0].slow == 1 and runners[1].slow == 0
        for r in caplog.records:
            assert_absent(canary, f"{r.getMessage()} {vars(r)!r}", "logs")
        release.set()  # it is not interrupted: it finishes and gets the next values
        await until(lambda: finished == [canary])
        assert len(fast) == 1
    finally:
        release.set()
        await svc.close()


# ---------------------------------------------------------------------------- versions
async def test_a_poll_that_read_before_a_local_write_does_not_put_the_older_version_back(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": 1})
    clock = ManualClock()
    svc = service(bao, clock)
    got: list[dict[str, Any]] = []
    real_fetch = svc._fetch
    read_done, gate = asyncio.Event(), asyncio.Event()

    async def fetch_then_wait(p: str) -> Any:
        entry = await real_fetch(p)
        if p == path and not gate.is_set():
            read_done.set()
            await gate.wait()  # the answer is late: a local write lands meanwhile
        return entry

    try:
        await svc.register_secret_listener(path, got.append)
        watcher = svc._listeners.watchers[path]
        svc._fetch = fetch_then_wait  # type: ignore[method-assign]
        await root.kv.write(path, {"v": 2}, cas=1)  # version 2, by someone else
        await drive(clock, read_done.is_set, what="the watcher's read of version 2")
        assert await svc.put_secret(path, {"v": 3}, cas=2) == 3  # notifies 3 at once
        await until(lambda: got == [{"v": 3}])
        polls = watcher.polls
        gate.set()
        await settle()
        entry = svc.cache.peek(path)
        assert entry is not None and entry.version == 3
        assert await svc.get_secret(path) == {"v": 3}
        # later polls see version 3 again: no second notification of it, none of 2
        await drive(clock, lambda: watcher.polls >= polls + 5)
        await settle()
        assert got == [{"v": 3}]
    finally:
        gate.set()
        await svc.close()


async def test_registering_on_an_unreachable_vault_raises_nothing_and_catches_up(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": 0})
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    port = proxy.port
    await proxy.down()
    clock = ManualClock()
    svc = service(bao, clock, addr=f"http://127.0.0.1:{port}", max_retries=0)
    got: list[dict[str, Any]] = []
    try:
        with pytest.raises(VaultError):
            await svc.get_secret(path)
        await svc.register_secret_listener(path, got.append)  # baseline unknown
        watcher = svc._listeners.watchers[path]
        await drive(clock, lambda: watcher._failures >= 50)
        await proxy.up()
        await drive(clock, lambda: watcher._failures == 0 and watcher.version == 1)
        await root.kv.write(path, {"v": 1}, cas=1)
        await drive(clock, lambda: got == [{"v": 1}])
    finally:
        await svc.close()
        await proxy.down()


# ---------------------------------------------------------------------------- repr
async def test_listener_objects_show_no_pending_or_delivered_value_in_repr(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": 0})
    canary = "canary-" + uuid.uuid4().hex
    clock = ManualClock()
    svc = service(bao, clock)
    release, entered = threading.Event(), threading.Event()

    def holding(value: dict[str, Any]) -> None:
        entered.set()
        release.wait(30)

    try:
        sub = await svc.register_secret_listener(path, holding)
        await svc.put_secret(path, {"token": canary}, cas=1)
        await until(entered.is_set)
        await svc.put_secret(path, {"token": canary + "-2"}, cas=2)  # pending behind it
        registry = svc._listeners
        watcher = registry.watchers[path]
        runner = watcher.runners[0]
        assert runner._pending is not None  # the newest value waits for the callback
        work = list(registry.executor._queue)
        for obj in (sub, runner, watcher, registry, registry.executor, *work):
            for text in (repr(obj), str(obj)):
                assert_absent(canary, text, f"repr of {type(obj).__name__}")
        assert path in repr(runner) and "pending_version=3" in repr(runner)
    finally:
        release.set()
        await svc.close()
