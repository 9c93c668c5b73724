"""maily_secrets.sync against the real OpenBao: many threads, listeners, transit, Django- and
Celery-style call patterns, fork, close at interpreter exit, and the guard against calls
from a running event loop.

The tests are plain ``def`` tests: the sync API is for threads without an event loop.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import multiprocessing
import os
import queue
import re
import subprocess
import sys
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from maily_secrets import sync
from maily_secrets.clock import ManualClock
from maily_secrets.errors import (
    CheckAndSetConflict,
    InvalidPath,
    SecretNotFound,
    VaultUnavailable,
)
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.snapshot import SnapshotStore, generate_key
from maily_secrets.sync import (
    CalledFromEventLoop,
    SyncVaultService,
    UsedAfterFork,
)

from .conftest import Bao
from .kit.sync_worker import celery_worker

ROOT = Path(__file__).resolve().parents[1]
#: generous bounds for waiting on events (never for making time pass)
WAIT = 60.0


def unique(prefix: str = "sync") -> str:
    return f"maily/data/{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def svc(bao: Bao) -> Any:
    s = SyncVaultService(bao.settings())
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------------- the surface
def test_every_public_async_method_of_vault_service_has_a_blocking_twin() -> None:
    missing, differ = [], []
    for name, fn in inspect.getmembers(VaultService, inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        twin = getattr(SyncVaultService, name, None)
        if twin is None or inspect.iscoroutinefunction(twin):
            missing.append(name)
            continue
        want = [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(twin).parameters.values()]
        if want != got:
            differ.append(name)
    assert not missing, f"no sync twin for {missing}"
    assert not differ, f"parameters differ from VaultService for {differ}"
    # sanity: the scan sees the guide's methods
    names = {n for n, _ in inspect.getmembers(VaultService, inspect.iscoroutinefunction)}
    assert {"get_config", "put_secret", "encrypt_data", "register_secret_listener"} <= names


def test_construction_does_no_io_and_starts_no_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    s = SyncVaultService(VaultSettings(addr="http://127.0.0.1:1", token="x"))
    assert repr(s) == "<SyncVaultService unused timeout=None>"
    s.close()  # never used: nothing to do, no loop started for it
    started = {t.name for t in threading.enumerate()} - before
    assert "maily-secrets-loop" not in started


# ---------------------------------------------------------------------------- threads
def test_sixteen_threads_read_while_four_writers_increment_with_cas(svc: SyncVaultService) -> None:
    path = unique()
    svc.put_secret(path, {"n": 0}, cas=0)
    readers, reads, writers, increments = 16, 50, 4, 10

    def read(_: int) -> list[int]:
        return [svc.get_secret(path)["n"] for _ in range(reads)]

    def write(_: int) -> int:
        for _ in range(increments):
            svc.update_secret(path, lambda cur: {"n": cur["n"] + 1})
        return increments

    with ThreadPoolExecutor(readers + writers) as pool:
        w = [pool.submit(write, i) for i in range(writers)]
        r = [pool.submit(read, i) for i in range(readers)]
        seen = [f.result(WAIT) for f in r]
        assert sum(f.result(WAIT) for f in w) == writers * increments

    for values in seen:
        assert len(values) == reads
        assert values == sorted(values)  # one thread never sees a value go back
        assert all(0 <= v <= writers * increments for v in values)
    assert svc.get_secret(path) == {"n": writers * increments}  # no lost update
    assert svc.get_secret_version(path) == 1 + writers * increments
    assert svc.read_entry(path).value == {"n": writers * increments}


def test_one_background_loop_thread_serves_every_service(bao: Bao) -> None:
    a, b = SyncVaultService(bao.settings()), SyncVaultService(bao.settings())
    try:
        a.get_config()
        b.get_config()
        loops = [t for t in threading.enumerate() if t.name == "maily-secrets-loop"]
        assert len(loops) == 1 and loops[0].daemon
    finally:
        a.close()
        b.close()


def test_errors_are_the_async_services_typed_errors(svc: SyncVaultService) -> None:
    with pytest.raises(SecretNotFound, match="maily/data/no-such-secret"):
        svc.get_secret("maily/data/no-such-secret")
    with pytest.raises(InvalidPath):
        svc.get_secret("maily/../sys/seal")
    with pytest.raises(SecretNotFound, match="nosuch"):
        svc.get_credentials("nosuch")
    path = unique()
    svc.put_secret(path, {"k": "v"}, cas=0)
    with pytest.raises(CheckAndSetConflict):
        svc.put_secret(path, {"k": "w"}, cas=0)
    assert svc.get_secret(path) == {"k": "v"}


def test_guide_reads_and_jwt_helpers(svc: SyncVaultService) -> None:
    assert "db_host" in svc.get_config()
    assert isinstance(svc.get_api_keys(), dict)
    assert "aws_access_key" in svc.get_credentials("aws")
    key = svc.get_jwt_signing_key()
    assert key.kid in svc.get_jwt_verification_keys()
    assert svc.kv_mount == "maily"


def test_a_fresh_hit_is_served_in_the_calling_thread_logged_and_copied(
    svc: SyncVaultService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = unique()
    svc.put_secret(path, {"k": ["v"]}, cas=0)
    svc.get_config()
    hops = 0
    submit = asyncio.run_coroutine_threadsafe

    def counting(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
        nonlocal hops
        hops += 1
        return submit(coro, loop)

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", counting)
    caplog.set_level(logging.INFO, logger="maily_secrets.access")
    first = svc.get_secret(path)
    first["k"].append("changed")
    assert svc.get_secret(path) == {"k": ["v"]}  # each caller has its own copy
    assert "db_host" in svc.get_config()
    assert hops == 0
    svc.close()  # writes the hits counted (one aggregate event per path per interval)
    hits = [r for r in caplog.records if getattr(r, "cache", None) == "hit"]
    got = [(getattr(r, "path", None), getattr(r, "count", None)) for r in hits]
    assert got == [(path, 2), ("maily/data/config", 1)]


def test_cached_values_expire_on_the_services_clock(bao: Bao) -> None:
    clock = ManualClock()
    svc = SyncVaultService(bao.settings(cache_ttl=30), clock=clock)
    path = unique()
    try:
        with SyncVaultService(bao.settings()) as other:
            other.put_secret(path, {"v": "1"}, cas=0)
            assert svc.get_secret(path) == {"v": "1"}
            other.put_secret(path, {"v": "2"}, cas=1)
        assert svc.get_secret(path) == {"v": "1"}  # still fresh

        async def advance(_: VaultService) -> None:
            await clock.advance(31)

        svc.run_async(advance)
        assert svc.get_secret(path) == {"v": "2"}
    finally:
        svc.close()


# ---------------------------------------------------------------------------- listeners
def test_listener_fires_on_a_write_made_from_another_thread(svc: SyncVaultService) -> None:
    path = unique()
    svc.put_secret(path, {"v": "1"}, cas=0)
    got: queue.Queue[tuple[dict[str, Any], str]] = queue.Queue()

    def on_change(value: dict[str, Any]) -> None:
        got.put((value, threading.current_thread().name))

    sub = svc.register_secret_listener(path, on_change, interval=3600)
    writer = threading.Thread(target=lambda: svc.put_secret(path, {"v": "2"}, cas=1))
    writer.start()
    writer.join(WAIT)
    value, thread = got.get(timeout=WAIT)
    assert value == {"v": "2"}
    assert thread != "maily-secrets-loop"  # a plain callback runs on the callback pool
    sub.cancel()
    assert svc.unregister_secret_listener(path, on_change) is False
    assert "v" not in repr(sub) and repr(sub).startswith("<SyncSubscription")


def test_listener_sees_an_outside_write_when_the_manual_clock_moves(bao: Bao) -> None:
    clock = ManualClock()
    svc = SyncVaultService(bao.settings(), clock=clock)
    other = SyncVaultService(bao.settings())
    path = unique()
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    try:
        other.put_secret(path, {"v": "1"}, cas=0)
        svc.register_secret_listener(path, got.put, interval=10)
        other.put_secret(path, {"v": "2"}, cas=1)  # not through svc: only its watcher can see it

        async def advance(_: VaultService) -> None:
            await clock.advance(12)  # past the interval and its jitter

        svc.run_async(advance)
        assert got.get(timeout=WAIT) == {"v": "2"}
        assert svc.get_secret(path) == {"v": "2"}  # the cache was updated first
    finally:
        svc.close()
        other.close()


def test_a_plain_callback_may_call_the_sync_api(svc: SyncVaultService) -> None:
    path = unique()
    svc.put_secret(path, {"v": "1"}, cas=0)
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    svc.register_secret_listener(path, lambda _: got.put(svc.get_secret(path)), interval=3600)
    svc.put_secret(path, {"v": "2"}, cas=1)
    assert got.get(timeout=WAIT) == {"v": "2"}


# ---------------------------------------------------------------------------- transit
def test_transit_round_trip_from_threads(svc: SyncVaultService) -> None:
    def roundtrip(i: int) -> tuple[str, bytes]:
        ct = svc.encrypt_data("maily-enc-key", f"héllo {i}")
        raw = svc.encrypt_data("maily-enc-key", bytes([i, 0, 255]))
        return svc.decrypt_data("maily-enc-key", ct), svc.decrypt_data(
            "maily-enc-key", raw, as_bytes=True
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(roundtrip, range(32)))
    assert results == [(f"héllo {i}", bytes([i, 0, 255])) for i in range(32)]

    items = [f"item-{i}" for i in range(600)]  # more than one batch
    cts = svc.encrypt_many("maily-enc-key", items)
    assert svc.decrypt_many("maily-enc-key", cts) == [s.encode() for s in items]
    assert svc.decrypt_many("maily-enc-key", svc.rewrap_many("maily-enc-key", cts[:3])) == [
        s.encode() for s in items[:3]
    ]


# ---------------------------------------------------------------------------- guards
async def test_a_call_from_a_running_event_loop_raises_instead_of_deadlocking(bao: Bao) -> None:
    svc = SyncVaultService(bao.settings())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CalledFromEventLoop, match=r"await vault_service\.get_config"):
            svc.get_config()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert svc._pid is None  # refused before anything started
    try:
        await asyncio.to_thread(svc.get_config)  # from a thread: fine, and now cached
        with pytest.raises(CalledFromEventLoop):
            svc.get_config()  # a cache hit is refused too: the same rule for every call
    finally:
        await asyncio.to_thread(svc.close)


def test_a_coroutine_callback_calling_the_sync_api_gets_the_error(svc: SyncVaultService) -> None:
    path = unique()
    svc.put_secret(path, {"v": "1"}, cas=0)
    got: queue.Queue[BaseException | None] = queue.Queue()

    async def on_change(_: dict[str, Any]) -> None:  # runs on the background loop
        try:
            svc.get_secret(path)
            got.put(None)
        except CalledFromEventLoop as exc:
            got.put(exc)

    svc.register_secret_listener(path, on_change, interval=3600)
    svc.put_secret(path, {"v": "2"}, cas=1)
    assert isinstance(got.get(timeout=WAIT), CalledFromEventLoop)
    assert svc.get_secret(path) == {"v": "2"}  # and the loop still serves


def test_timeout_cancels_the_work_and_raises_vault_unavailable(bao: Bao) -> None:
    svc = SyncVaultService(bao.settings(), timeout=0.05)
    cancelled = threading.Event()

    async def never(_: VaultService) -> None:
        try:
            await asyncio.Event().wait()  # nothing ever sets it
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        with pytest.raises(VaultUnavailable, match=r"did not complete within 0\.05s"):
            svc.run_async(never)
        assert cancelled.wait(WAIT)
        with SyncVaultService(bao.settings(), timeout=WAIT) as patient:
            assert "db_host" in patient.get_config()  # the loop still serves
    finally:
        svc.close()


def test_repr_shows_no_token_and_no_value(bao: Bao) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    svc = SyncVaultService(bao.settings())
    path = unique()
    try:
        svc.put_secret(path, {"password": canary}, cas=0)
        sub = svc.register_secret_listener(path, print, interval=3600)
        text = f"{svc!r} {svc!s} {sub!r} {sub!s}"
        assert canary not in text and bao.token not in text
    finally:
        svc.close()


# ---------------------------------------------------------------------------- call patterns
def django_view(request_id: int) -> dict[str, Any]:
    """A Django-style view: a plain function that uses the module's service per request."""
    config = sync.vault_service.get_config()
    return {"request": request_id, "db_host": config["db_host"]}


def test_django_style_views_from_a_thread_pool(bao: Bao, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    sync.vault_service.close()  # start from the environment set above
    try:
        with ThreadPoolExecutor(8, thread_name_prefix="wsgi") as pool:
            responses = list(pool.map(django_view, range(200)))
        assert [r["request"] for r in responses] == list(range(200))
        assert len({r["db_host"] for r in responses}) == 1
    finally:
        sync.vault_service.close()


def test_celery_style_tasks_in_a_spawned_worker_process(svc: SyncVaultService, bao: Bao) -> None:
    path = unique()
    svc.put_secret(path, {"v": "x"}, cas=0)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=celery_worker, args=(bao.addr, bao.token, path, 20, out))
    p.start()
    try:
        assert out.get(timeout=WAIT) == [f"x-{i}" for i in range(20)]
    finally:
        p.join(WAIT)
    assert p.exitcode == 0


def forked_child(svc: SyncVaultService, out: Any) -> None:
    try:
        svc.get_config()
        out.put("no error")
    except UsedAfterFork as exc:
        out.put(str(exc))
    svc.reset_after_fork()
    out.put(svc.get_config()["db_host"])
    svc.close()


def test_a_forked_child_is_refused_until_reset_after_fork(svc: SyncVaultService) -> None:
    host = svc.get_config()["db_host"]  # used in the parent: its connections are the parent's
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=forked_child, args=(svc, out))
    p.start()
    try:
        message = out.get(timeout=WAIT)
        assert "forked child" in message and "reset_after_fork" in message
        assert out.get(timeout=WAIT) == host
    finally:
        p.join(WAIT)
    assert p.exitcode == 0
    assert svc.get_config()["db_host"] == host  # the parent's service is unharmed


EXIT_SCRIPT = """
import os, sys, time
from pathlib import Path
from maily_secrets.sync import SyncVaultService
svc = SyncVaultService()
svc.get_secret(sys.argv[1])
snap = Path(os.environ["MAILY_SECRETS_SNAPSHOT_PATH"])
deadline = time.monotonic() + 60
while not snap.exists() and time.monotonic() < deadline:  # the first write, done at once
    time.sleep(0.01)
svc.put_secret(sys.argv[2], {"late": "yes"}, cas=0)  # saved only by close()
svc.register_secret_listener(sys.argv[1], print, interval=3600)
if sys.argv[3] == "hard":
    os._exit(0)

def late_call():  # an atexit hook runs after ours: the service is closed by then
    try:
        svc.get_secret(sys.argv[1])
    except Exception as exc:
        print("late call:", type(exc).__name__)

import atexit
atexit.register(late_call)
"""


def run_exit_script(
    bao: Bao, tmp_path: Path, how: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    snap = tmp_path / f"{how}.snapshot"
    key = generate_key()
    first, late = unique(), unique()
    with SyncVaultService(bao.settings()) as root:
        root.put_secret(first, {"v": "1"}, cas=0)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "MAILY_SECRETS_SNAPSHOT_PATH": str(snap),
        "MAILY_SECRETS_SNAPSHOT_KEY": key,
        "MAILY_SECRETS_SNAPSHOT_INTERVAL": "3600",
    }
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", EXIT_SCRIPT, first, late, how],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return proc, SnapshotStore(snap, key).load(), late


_SLOW_STEP = re.compile(r"^Executing <.*> took \d+(\.\d+)? seconds$")


def _without_slow_step_reports(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(True) if not _SLOW_STEP.match(line.strip()))


def test_services_left_open_are_closed_at_interpreter_exit(bao: Bao, tmp_path: Path) -> None:
    proc, entries, late = run_exit_script(bao, tmp_path, "normal")
    assert proc.returncode == 0, proc.stderr
    # -X dev: no ResourceWarning, "Unclosed ...", traceback. Its asyncio debug mode also
    # reports steps slower than 0.1 s, which a busy machine produces: those are not leaks.
    assert _without_slow_step_reports(proc.stderr) == ""
    assert entries[late]["data"] == {"late": "yes"}  # close() flushed the snapshot
    assert proc.stdout == "late call: SyncUsageError\n"  # not a hang, not a closed loop
    # control: the same process killed without its exit hooks did not save it
    proc, entries, late = run_exit_script(bao, tmp_path, "hard")
    assert proc.returncode == 0, proc.stderr
    assert late not in entries
