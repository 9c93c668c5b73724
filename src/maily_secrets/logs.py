"""Structured (JSON lines) logging for Maily Secrets' own events.

The library only *emits* records, on loggers named ``maily_secrets.*``; it adds no
handler and never touches ``propagate``, so records reach whatever the application
configured (the root logger, structlog's ``ProcessorFormatter``, a JSON handler).
:func:`configure` is for processes without a logging setup of their own (the CLI,
a script): it puts one handler on the ``maily_secrets`` logger.

A line of :class:`JsonFormatter`::

    {"ts": "2026-12-01T22:41:16.123Z", "level": "info", "logger": "maily_secrets.access",
     "msg": "secret read maily/data/config miss ok", "log_type": "secret_read", ...}

(Fresh cache hits are counted, not logged one by one: :mod:`maily_secrets.access`.)
``ts`` is UTC, RFC 3339 with milliseconds. Events carry their fields as ``extra``:
path, key names, cache status, outcome, durations; never a secret value. No field is
named ``event`` (structlog's key for the message) nor after a ``logging.LogRecord``
attribute (``name``, ``msg``, ``args``, ...: ``logging`` refuses those in ``extra``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: The keys of every line, in order; an ``extra`` of the same name never replaces one.
RESERVED = ("ts", "level", "logger", "msg")
_HANDLER_MARK = "_maily_secrets_handler"


def rfc3339(epoch: float) -> str:
    """``2026-12-01T22:41:16.123Z``: UTC, milliseconds, ``Z``."""
    dt = datetime.fromtimestamp(epoch, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_") and k not in doc:
                doc[k] = v
        if record.exc_info and record.exc_info[0] is not None:
            doc.setdefault("error", record.exc_info[0].__name__)
        return json.dumps(doc, default=str)


class _PlainFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)


def configure(level: int = logging.INFO, stream: Any = None, json_lines: bool = True) -> None:
    """Send ``maily_secrets.*`` records to ``stream`` (stderr) as JSON lines.

    Replaces the handler an earlier call added (not anybody else's) and sets the
    ``maily_secrets`` logger's level. ``propagate`` is left as it is: an application
    that also logs the root logger somewhere should not call this, but give its own
    handler a :class:`JsonFormatter` (or let its structlog setup format the records).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else _PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    setattr(handler, _HANDLER_MARK, True)
    logger = logging.getLogger("maily_secrets")
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)


def unconfigure() -> None:
    """Remove the handler :func:`configure` added (tests, embedding)."""
    logger = logging.getLogger("maily_secrets")
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)


__all__ = ["RESERVED", "JsonFormatter", "configure", "rfc3339", "unconfigure"]
