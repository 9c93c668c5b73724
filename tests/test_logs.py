"""Logs that fit an application's own logging: JSON lines with UTC RFC 3339 milliseconds,
``propagate`` left alone, no handler unless asked for, field names that clash with
neither structlog's ``event`` nor ``logging.LogRecord``'s attributes."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maily_secrets import logs
from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.listeners import new_secret

SRC = Path(__file__).resolve().parent.parent / "src" / "maily_secrets"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LOG_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


@pytest.fixture
def ours() -> Iterator[logging.Logger]:
    logger = logging.getLogger("maily_secrets")
    level, propagate, handlers = logger.level, logger.propagate, list(logger.handlers)
    try:
        yield logger
    finally:
        logs.unconfigure()
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers


def test_timestamps_are_utc_rfc3339_with_milliseconds() -> None:
    assert logs.rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert logs.rfc3339(1_796_164_876.1239) == "2026-12-01T22:41:16.123Z"
    record = logging.makeLogRecord({"name": "maily_secrets.x", "msg": "hi", "levelname": "INFO"})
    doc = json.loads(logs.JsonFormatter().format(record))
    assert RFC3339_MS.match(doc["ts"]), doc["ts"]
    assert list(doc)[:4] == ["ts", "level", "logger", "msg"]


def test_an_extra_never_replaces_a_line_key() -> None:
    record = logging.makeLogRecord({"name": "maily_secrets.x", "msg": "hi", "levelname": "INFO"})
    record.__dict__.update({"ts": "forged", "level": "forged", "path": "maily/data/config"})
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["ts"] != "forged" and doc["level"] == "info"
    assert doc["path"] == "maily/data/config"


def test_configure_adds_one_handler_and_leaves_propagate_alone(
    ours: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    app_handler = logging.NullHandler()
    ours.addHandler(app_handler)
    first, second = io.StringIO(), io.StringIO()
    logs.configure(logging.INFO, stream=first)
    logs.configure(logging.INFO, stream=second)  # replaces our handler, not the app's
    assert ours.propagate is True
    assert app_handler in ours.handlers
    assert len(ours.handlers) == 2
    with caplog.at_level(logging.INFO):  # caplog listens on the root logger
        logging.getLogger("maily_secrets.service").info("hello", extra={"path": "p"})
    assert [r.getMessage() for r in caplog.records] == ["hello"]  # it propagated
    assert first.getvalue() == ""
    doc = json.loads(second.getvalue())
    assert doc["msg"] == "hello" and doc["path"] == "p" and RFC3339_MS.match(doc["ts"])


def test_using_the_library_adds_no_handler_and_keeps_propagate() -> None:
    code = (
        "import logging\n"
        "import maily_secrets, maily_secrets.service, maily_secrets.metrics\n"
        "import maily_secrets.cli.main\n"
        "maily_secrets.service.VaultService()\n"
        "lg = logging.getLogger('maily_secrets')\n"
        "print(len(lg.handlers), lg.propagate, len(logging.getLogger().handlers))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["0", "True", "0"]


def _extra_keys(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Keys of every ``extra=`` dict in the source, and of dicts bound to a name used so."""
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
            continue
        named: dict[str, list[ast.Dict]] = {}
        for node in ast.walk(fn):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        named.setdefault(t.id, []).append(node.value)
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and isinstance(node.slice, ast.Constant):
                    named.setdefault(node.value.id, []).append(
                        ast.Dict(keys=[node.slice], values=[node.slice])
                    )
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg != "extra":
                    continue
                dicts = [kw.value] if isinstance(kw.value, ast.Dict) else []
                if isinstance(kw.value, ast.Name):
                    dicts = named.get(kw.value.id, [])
                for d in dicts:
                    if not isinstance(d, ast.Dict):
                        continue
                    for k in d.keys:
                        if isinstance(k, ast.Constant) and isinstance(k.value, str):
                            yield node.lineno, k.value


def test_no_log_field_is_named_event_or_after_a_log_record_attribute() -> None:
    found: list[str] = []
    bad: list[str] = []
    for f in sorted(SRC.rglob("*.py")):
        for line, key in _extra_keys(ast.parse(f.read_text(), str(f))):
            found.append(key)
            if key == "event" or key in LOG_RECORD_ATTRS or key in logs.RESERVED:
                bad.append(f"{f.relative_to(SRC)}:{line}: {key}")
    assert {"path", "log_type", "lease_event"} <= set(found)  # the scan sees the fields
    assert not bad, bad


async def test_a_real_read_logs_a_structlog_friendly_access_line(
    bao: Bao, root: VaultClient, ours: logging.Logger
) -> None:
    path = await new_secret(root, {"password": "CANARY-access"}, prefix="logs")
    stream = io.StringIO()
    logs.configure(logging.INFO, stream=stream)
    svc = VaultService(bao.settings())
    try:
        await svc.get_secret(path)
        await svc.get_secret(path)
    finally:
        await svc.close()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    access = [d for d in lines if d.get("log_type") == "secret_read"]
    assert [d["cache"] for d in access] == ["miss", "hit"]
    assert all("event" not in d and RFC3339_MS.match(d["ts"]) for d in lines)
    assert access[0]["keys"] == ["password"]
    assert "CANARY-access" not in stream.getvalue()
