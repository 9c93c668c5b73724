"""The access log: fresh hits counted per path per interval (one aggregate event each),
one event per miss, error and stale serve, nothing lost at close, at exit or between
threads, never a value. The window moves on an injected clock; the service tests read
real secrets from a real OpenBao."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maily_secrets import logs
from maily_secrets.access import AccessLog
from maily_secrets.clock import ManualClock
from maily_secrets.errors import InvalidPath, SecretNotFound
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.sync import SyncVaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.listeners import new_secret

ROOT = Path(__file__).resolve().parent.parent
CANARY = "CANARY-access-" + uuid.uuid4().hex


class Lines(logging.Handler):
    """Every record as the JSON line ``logs.JsonFormatter`` makes of it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.lines]

    def reads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("log_type") == "secret_read"]


@pytest.fixture
def private_logger() -> Iterator[tuple[logging.Logger, Lines]]:
    logger = logging.getLogger(f"maily_secrets.access.test-{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def access_lines() -> Iterator[Lines]:
    """The real ``maily_secrets.access`` logger at INFO, into a list of JSON lines."""
    logger = logging.getLogger("maily_secrets.access")
    level = logger.level
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


VALUE = {"db_password": CANARY, "db_host": "db"}


# ---------------------------------------------------------------------------- the counter
async def test_hits_within_one_interval_are_one_event_with_count_first_and_last(
    private_logger: tuple[logging.Logger, Lines],
) -> None:
    logger, out = private_logger
    clock = ManualClock(start=100.0, wall_start=1_800_000_000.0)
    log = AccessLog(clock, interval=10, logger=logger)
    for step in (0, 2, 2, 3, 2):  # hits at 0, 2, 4, 7 and 9 s
        await clock.advance(step)
        log.hit("maily/data/config", VALUE)
    assert out.lines == []  # a hit writes nothing
    await clock.advance(1.5)  # 10.5 s: the window closed; the next hit writes it
    log.hit("maily/data/config", VALUE)
    [agg] = out.reads()
    assert agg["count"] == 5
    assert agg["first_at"] == logs.rfc3339(1_800_000_000.0)
    assert agg["last_at"] == logs.rfc3339(1_800_000_009.0)
    assert (agg["path"], agg["cache"], agg["outcome"]) == ("maily/data/config", "hit", "ok")
    assert agg["keys"] == ["db_host", "db_password"]
    assert log.pending == 1  # the hit at 10.5 s opened the next window
    assert log.flush() == 1
    second = out.reads()[1]
    assert second["count"] == 1 and second["first_at"] == logs.rfc3339(1_800_000_010.5)
    assert CANARY not in "\n".join(out.lines)


async def test_each_path_and_each_service_has_its_own_aggregate(
    private_logger: tuple[logging.Logger, Lines],
) -> None:
    logger, out = private_logger
    log = AccessLog(ManualClock(), interval=10, logger=logger)
    for _ in range(3):
        log.hit("maily/data/config", VALUE)
        log.hit("maily/data/credentials", {"aws_access_key": CANARY}, "aws")
    log.hit("maily/data/credentials", {"smtp_user": CANARY}, "smtp")
    assert log.flush() == 3
    got = {(d["path"], d.get("service")): d["count"] for d in out.reads()}
    assert got == {
        ("maily/data/config", None): 3,
        ("maily/data/credentials", "aws"): 3,
        ("maily/data/credentials", "smtp"): 1,
    }
    assert log.flush() == 0 and len(out.lines) == 3  # nothing twice
    assert CANARY not in "\n".join(out.lines)


def test_an_interval_of_zero_writes_every_hit_at_once(
    private_logger: tuple[logging.Logger, Lines],
) -> None:
    logger, out = private_logger
    log = AccessLog(ManualClock(), interval=0, logger=logger)
    log.hit("maily/data/config", VALUE)
    log.hit("maily/data/config", VALUE)
    assert [d["count"] for d in out.reads()] == [1, 1]
    assert log.pending == 0


def test_hits_from_many_threads_while_another_flushes_all_add_up(
    private_logger: tuple[logging.Logger, Lines],
) -> None:
    logger, out = private_logger
    log = AccessLog(ManualClock(), interval=10, logger=logger)
    threads, per_thread = 8, 5_000
    done = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can

    def reader(i: int) -> None:
        path = f"maily/data/p{i % 2}"
        for _ in range(per_thread):
            log.hit(path, VALUE)

    def flusher() -> None:
        while not done.is_set():
            log.flush()

    try:
        f = threading.Thread(target=flusher)
        f.start()
        ts = [threading.Thread(target=reader, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        done.set()
        f.join()
    finally:
        sys.setswitchinterval(switch)
    log.flush()
    assert sum(d["count"] for d in out.reads()) == threads * per_thread


def test_pending_hits_are_written_at_interpreter_exit() -> None:
    code = (
        "import logging, sys\n"
        "from maily_secrets import logs\n"
        "from maily_secrets.access import AccessLog\n"
        "logs.configure(logging.INFO, stream=sys.stdout)\n"
        "log = AccessLog(interval=3600)\n"
        "for _ in range(7):\n"
        "    log.hit('maily/data/config', {'k': 'v'})\n"
        "print('exiting', flush=True)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    first, *rest = out.stdout.splitlines()
    assert first == "exiting"  # written after the script ended, not by a hit
    [doc] = [json.loads(x) for x in rest]
    assert (doc["path"], doc["count"]) == ("maily/data/config", 7)


def test_the_interval_is_a_setting_with_a_default_of_ten_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert VaultSettings().access_log_interval == 10.0
    monkeypatch.setenv("MAILY_SECRETS_ACCESS_LOG_INTERVAL", "2.5")
    assert VaultSettings().access_log_interval == 2.5


# ---------------------------------------------------------------------------- the service
async def test_service_hits_are_one_aggregate_a_miss_and_errors_their_own_events(
    bao: Bao, root: VaultClient, access_lines: Lines
) -> None:
    path = await new_secret(root, {"password": CANARY}, prefix="access")
    clock = ManualClock()
    svc = VaultService(bao.settings(cache_ttl=60), clock=clock)
    try:
        await svc.get_secret(path)  # the miss
        for _ in range(4):
            await clock.advance(1)
            await svc.get_secret(path)
        with pytest.raises(SecretNotFound):
            await svc.get_secret("maily/data/absent-" + uuid.uuid4().hex)
        with pytest.raises(InvalidPath):
            await svc.get_secret("maily/../sys/seal")
        before_close = [(d["cache"], d["outcome"]) for d in access_lines.reads()]
    finally:
        await svc.close()
    assert before_close == [("miss", "ok"), ("miss", "not_found"), ("miss", "invalid_path")]
    reads = access_lines.reads()
    assert [d.get("count") for d in reads] == [None, None, None, 4]  # the hits, by close()
    agg = reads[-1]
    assert (agg["path"], agg["cache"], agg["outcome"]) == (path, "hit", "ok")
    assert agg["first_at"] == logs.rfc3339(clock.time() - 3)
    assert agg["last_at"] == logs.rfc3339(clock.time())
    assert agg["keys"] == ["password"] and "duration_ms" in reads[0]
    assert CANARY not in "\n".join(access_lines.lines)


async def test_service_credential_hits_are_counted_per_service(
    bao: Bao, access_lines: Lines
) -> None:
    svc = VaultService(bao.settings(), clock=ManualClock())
    try:
        aws = await svc.get_credentials("aws")
        await svc.get_credentials("aws")
        await svc.get_credentials("aws")
        with pytest.raises(SecretNotFound):
            await svc.get_credentials("no-such-service")  # a hit of the path, not of it
    finally:
        await svc.close()
    got = [
        (d["cache"], d["outcome"], d.get("service"), d.get("count")) for d in access_lines.reads()
    ]
    assert got == [
        ("miss", "ok", "aws", None),
        ("hit", "not_found", "no-such-service", None),
        ("hit", "ok", "aws", 2),
    ]
    text = "\n".join(access_lines.lines)
    for v in aws.values():
        if isinstance(v, str) and len(v) > 8:
            assert v not in text


async def test_a_stale_serve_is_its_own_event(private_bao: Bao, access_lines: Lines) -> None:
    clock = ManualClock()
    svc = VaultService(
        private_bao.settings(cache_ttl=5, max_staleness=60, max_retries=0), clock=clock
    )
    try:
        await svc.get_config()
        await svc.get_config()  # a hit
        await clock.advance(6)  # expired
        private_bao.server.stop()
        await svc.get_config()
        await svc.get_config()
    finally:
        await svc.close()
    got = [(d["cache"], d["outcome"], d.get("count")) for d in access_lines.reads()]
    assert got == [
        ("miss", "ok", None),
        ("stale", "ok", None),
        ("stale", "ok", None),
        ("hit", "ok", 1),
    ]


async def test_hits_while_the_logger_is_disabled_are_not_counted(
    bao: Bao, access_lines: Lines
) -> None:
    svc = VaultService(bao.settings(), clock=ManualClock())
    logger = logging.getLogger("maily_secrets.access")
    try:
        await svc.get_config()
        logger.setLevel(logging.WARNING)
        for _ in range(5):
            await svc.get_config()
        logger.setLevel(logging.INFO)
        await svc.get_config()
    finally:
        await svc.close()
    assert [d.get("count") for d in access_lines.reads()] == [None, 1]


def test_sync_hits_from_two_threads_add_up(bao: Bao, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="maily_secrets.access")
    with SyncVaultService(bao.settings()) as svc:
        svc.get_config()  # the miss
        per_thread = 2_000

        def reader() -> None:
            for _ in range(per_thread):
                svc.get_config()

        ts = [threading.Thread(target=reader) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    hits = [r for r in caplog.records if getattr(r, "cache", None) == "hit"]
    assert sum(getattr(r, "count", 0) for r in hits) == 2 * per_thread
    assert len(hits) <= 2  # aggregates (a window may close mid-run), not one per hit


def test_json_lines_of_an_aggregate_have_no_reserved_or_forbidden_field() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("maily_secrets.access.fields-" + uuid.uuid4().hex[:8])
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    log = AccessLog(ManualClock(), logger=logger)
    log.hit("maily/data/config", VALUE, "svc")
    log.flush()
    doc = json.loads(stream.getvalue())
    assert list(doc)[:4] == list(logs.RESERVED)
    assert "event" not in doc
    assert doc["msg"] == "secret read maily/data/config hit ok x1"
