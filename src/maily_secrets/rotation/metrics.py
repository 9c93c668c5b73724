"""Prometheus metrics of a ``secrets rotate`` run (a fresh registry per run).

A rotation is a batch job, so its metrics are either pushed to a Pushgateway
(``MAILY_PUSHGATEWAY_URL`` or an explicit URL) or written for node-exporter's
textfile collector. Per environment and secret type:

``maily_secret_rotation_last_success_timestamp_seconds{env,type}``
    when the type was last rotated successfully (this run, or the ``last_rotated``
    the engine knows of when this run skipped it);
``maily_secret_rotation_duration_seconds{env,type}``
    how long this run spent on the type;
``maily_secret_rotation_last_outcome{env,type,outcome}``
    1 for this run's outcome, 0 for every other outcome (so
    ``maily_secret_rotation_last_outcome{outcome="failed"} == 1`` is an alert);
``maily_secret_rotation_next_due_timestamp_seconds{env,type}``
    when the type is next due.

Pushing or writing never raises: both return ``{"channel", "ok", "detail"}`` like
the notifications do, and neither ever shows credentials of the gateway URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import (
    basic_auth_handler,
    default_handler,
    push_to_gateway,
    write_to_textfile,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .report import RunReport, Status, TypeResult

log = logging.getLogger("maily_secrets.rotation.metrics")

PUSHGATEWAY_ENV = "MAILY_PUSHGATEWAY_URL"
DEFAULT_JOB = "maily-secret-rotation"
PUSH_TIMEOUT_S = 10.0

OUTCOMES: tuple[str, ...] = get_args(Status)
_SUCCESS = frozenset({"rotated", "resumed"})


def _epoch(dt: datetime) -> float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _success_time(report: RunReport, r: TypeResult) -> datetime | None:
    if r.status in _SUCCESS:
        if r.started_at is not None:
            return r.started_at + timedelta(seconds=r.duration_s)
        return r.last_rotated or report.finished_at or datetime.now(UTC)
    return r.last_rotated


def record(report: RunReport) -> CollectorRegistry:
    """The metrics of one run, in a registry of their own (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=True)
    labels = ("env", "type")
    last_success = Gauge(
        "maily_secret_rotation_last_success_timestamp_seconds",
        "Unix time of the last successful rotation of the secret type.",
        labels,
        registry=registry,
    )
    duration = Gauge(
        "maily_secret_rotation_duration_seconds",
        "Seconds the last rotation run spent on the secret type.",
        labels,
        registry=registry,
    )
    outcome = Gauge(
        "maily_secret_rotation_last_outcome",
        "Outcome of the last rotation run for the secret type (1 = this outcome).",
        (*labels, "outcome"),
        registry=registry,
    )
    next_due = Gauge(
        "maily_secret_rotation_next_due_timestamp_seconds",
        "Unix time when the secret type is next due for rotation.",
        labels,
        registry=registry,
    )
    for r in report.results:
        env, typ = report.env, r.type
        success = _success_time(report, r)
        if success is not None:
            last_success.labels(env, typ).set(_epoch(success))
        duration.labels(env, typ).set(r.duration_s)
        for o in (*OUTCOMES, *([r.status] if r.status not in OUTCOMES else [])):
            outcome.labels(env, typ, o).set(1 if o == r.status else 0)
        if r.next_due is not None:
            next_due.labels(env, typ).set(_epoch(r.next_due))
    return registry


# --------------------------------------------------------------------------- push


class _Subset(Collector):
    """The samples of ``source`` whose labels match ``match`` (one Pushgateway group)."""

    def __init__(self, source: CollectorRegistry, match: Mapping[str, str]) -> None:
        self._source = source
        self._match = dict(match)

    def collect(self) -> Iterable[Metric]:
        for m in self._source.collect():
            copy = Metric(m.name, m.documentation, m.type, m.unit)
            copy.samples = [
                s for s in m.samples if all(s.labels.get(k) == v for k, v in self._match.items())
            ]
            if copy.samples:
                yield copy


def _label_values(registry: CollectorRegistry, label: str) -> list[str]:
    seen: dict[str, None] = {}
    for m in registry.collect():
        for s in m.samples:
            if label in s.labels:
                seen.setdefault(s.labels[label], None)
    return list(seen)


def _safe_gateway(url: str) -> tuple[str, str, Callable[..., Any]]:
    """(URL without credentials, host to show, handler with basic auth if the URL had any)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or "?"
    shown = f"{host}:{parts.port}" if parts.port else host
    netloc = shown if parts.hostname else parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if parts.username is not None or parts.password is not None:
        handler: Callable[..., Any] = partial(
            basic_auth_handler, username=parts.username or "", password=parts.password or ""
        )
    else:
        handler = default_handler
    return clean, shown, handler


def _result(channel: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"channel": channel, "ok": ok, "detail": detail}


def push(
    registry: CollectorRegistry,
    gateway_url: str | None = None,
    job: str = DEFAULT_JOB,
    grouping: Mapping[str, str] | None = None,
    *,
    timeout: float = PUSH_TIMEOUT_S,
) -> dict[str, Any]:
    """PUT the registry to a Pushgateway (``gateway_url`` or ``$MAILY_PUSHGATEWAY_URL``).

    With an explicit ``grouping`` the whole registry is one group. Without one it is
    pushed as one group per secret type (``{env, type}``): a PUT replaces its whole
    group, so a run of only some types (``--secret-types jwt``) leaves the other
    types' last success and next due on the gateway as they were.

    Blocking (urllib): from async code use ``await asyncio.to_thread(push, ...)`` or
    :func:`push_async`. Never raises; returns ``{"channel": "pushgateway", ...}``.
    """
    url = gateway_url or os.environ.get(PUSHGATEWAY_ENV, "").strip()
    if not url:
        return _result("pushgateway", True, "not configured")
    try:
        clean, host, handler = _safe_gateway(url)
    except ValueError:
        return _result("pushgateway", False, "the Pushgateway URL is malformed")
    if grouping is not None:
        groups: list[tuple[dict[str, str], Collector]] = [(dict(grouping), registry)]
    else:
        envs = _label_values(registry, "env")
        types = _label_values(registry, "type")
        if not envs or not types:
            return _result("pushgateway", True, "nothing to push")
        groups = []
        for env in envs:
            for typ in types:
                key = {"env": env, "type": typ}
                sub = CollectorRegistry(auto_describe=False)
                sub.register(_Subset(registry, key))
                groups.append((key, sub))
    pushed = 0
    for key, collector in groups:
        try:
            push_to_gateway(
                clean, job, collector, grouping_key=key, timeout=timeout, handler=handler
            )
            pushed += 1
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = getattr(reason, "strerror", None) or type(reason).__name__
        except (TimeoutError, OSError) as exc:
            why = exc.strerror or type(exc).__name__
        except Exception as exc:  # a metrics push never fails the run
            why = type(exc).__name__
        else:
            continue
        detail = f"push to Pushgateway {host} failed: {why} ({pushed} of {len(groups)} pushed)"
        log.warning(detail, extra={"channel": "pushgateway", "outcome": "failed"})
        return _result("pushgateway", False, detail)
    detail = f"pushed {pushed} group(s) to {host} (job {job})"
    log.info(detail, extra={"channel": "pushgateway", "outcome": "pushed"})
    return _result("pushgateway", True, detail)


async def push_async(
    registry: CollectorRegistry,
    gateway_url: str | None = None,
    job: str = DEFAULT_JOB,
    grouping: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`push` in a worker thread (it does blocking HTTP)."""
    return await asyncio.to_thread(push, registry, gateway_url, job, grouping)


# --------------------------------------------------------------------------- textfile


def write_textfile(registry: CollectorRegistry, path: str | Path) -> dict[str, Any]:
    """Write for node-exporter's textfile collector (atomically: temp file + rename).

    ``path`` should end in ``.prom`` and live in the collector's directory. Never raises.
    """
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        detail = f"cannot write metrics file {path}: {exc.strerror or type(exc).__name__}"
        log.warning(detail, extra={"channel": "textfile", "outcome": "failed"})
        return _result("textfile", False, detail)
    return _result("textfile", True, f"wrote {path}")


__all__ = [
    "DEFAULT_JOB",
    "OUTCOMES",
    "PUSHGATEWAY_ENV",
    "push",
    "push_async",
    "record",
    "write_textfile",
]
