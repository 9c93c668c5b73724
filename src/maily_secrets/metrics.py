"""Prometheus metrics of a running service (``pip install maily-secrets[metrics]``).

``ServiceMetrics(registry)`` is an :class:`~maily_secrets.observe.Observer`: give it to
the service (``VaultService(observer=ServiceMetrics())``) and expose the registry
(``prometheus_client.generate_latest(registry)``, or ``make_asgi_app``). The names
follow Prometheus' conventions and share the ``maily_secret_`` prefix of the rotation
metrics (``rotation/metrics.py``):

``maily_secret_cache_reads_total{path,result}`` (counter)
    reads of a secret by how they were answered: ``hit`` (fresh in memory), ``miss``
    (read from Vault), ``stale`` (last known value served while Vault is down),
    ``snapshot`` (from the encrypted file), ``failed`` (nothing servable). ``path`` is
    the secret's API path: the app's own secrets, a bounded set (at most
    ``max_paths`` distinct values; any further path is counted as ``other``).
``maily_secret_vault_request_duration_seconds{method,operation,status}`` (histogram)
    every HTTP attempt to Vault; ``operation`` is the path as a template
    (``maily/data/{name}``, ``database/creds/{name}``, ``auth/token/renew-self``,
    ``sys/leases/renew``): never an id; ``status`` the HTTP code or ``error``.
``maily_secret_token_ttl_seconds`` (gauge, computed at scrape time)
    seconds left of the current Vault token (``+Inf`` for one that never expires).
``maily_secret_watcher_last_success_timestamp_seconds{path}`` (gauge)
    Unix time of the last successful poll of a watched secret.
``maily_secret_listener_change_lag_seconds{path}`` (histogram)
    from a new version's ``created_time`` in Vault to the return of a listener
    callback that received it: how long the process ran on the old value.
``maily_secret_lease_expiry_timestamp_seconds{path}`` (gauge)
    Unix time at which the current lease of a dynamic secret ends; ``path`` is the
    lease's key (``database/creds/<role>``), not its lease id (ids change at every
    rotation and would grow the series without bound). Removed when the lease is.

Alerts these make possible: ``rate(maily_secret_cache_reads_total{result="stale"}[5m]) > 0``
(serving stale secrets), ``time() - maily_secret_watcher_last_success_timestamp_seconds >
300``, ``maily_secret_token_ttl_seconds < 300``,
``maily_secret_lease_expiry_timestamp_seconds - time() < 60``.

``prometheus_client`` is optional: this module imports without it and
:class:`ServiceMetrics` raises a clear :class:`ImportError` when it is missing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .observe import Observer

try:
    import prometheus_client as _prom
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # pragma: no cover - exercised by installs without the extra
    _prom = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .clock import Clock

PREFIX = "maily_secret_"
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
OTHER = "other"


def operation_of(path: str) -> str:
    """The path of a Vault request as a template with a bounded set of values.

    ``maily/data/config`` -> ``maily/data/{name}``; ``transit/encrypt/k`` ->
    ``transit/encrypt/{name}``; ``sys/leases/lookup/<id>`` -> ``sys/leases/lookup``;
    ``auth/token/renew-self`` stays; ``auth/kubernetes/login`` stays.
    """
    segs = [s for s in path.split("?", 1)[0].split("/") if s]
    if not segs:
        return "/"
    if segs[0] == "sys":
        keep = 3 if len(segs) > 1 and segs[1] == "leases" else 2
        return "/".join(segs[:keep])
    if segs[0] == "auth":
        return "/".join(segs[:3])
    if len(segs) <= 2:
        return "/".join(segs)
    return f"{segs[0]}/{segs[1]}/{{name}}"


class ServiceMetrics(Observer):
    """The Prometheus observer; ``registry`` defaults to prometheus_client's global one.

    Tests pass their own ``CollectorRegistry()``. One instance per registry: the
    metric names can be registered only once in each.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, max_paths: int = 500) -> None:
        if _prom is None:
            raise ImportError(
                "maily_secrets.metrics needs prometheus-client:"
                " pip install 'maily-secrets[metrics]'"
            )
        self.registry: CollectorRegistry = registry if registry is not None else _prom.REGISTRY
        self.max_paths = max_paths
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        reg = self.registry
        # Cache reads are the hot path (a hit costs a few microseconds): counted in a plain
        # dict per thread (no lock) and summed when scraped, instead of a locked Counter.
        self._local = threading.local()
        self._per_thread: list[dict[tuple[str, str], int]] = []
        self.request_duration = _prom.Histogram(
            PREFIX + "vault_request_duration_seconds",
            "Duration of HTTP attempts to Vault by method, operation template and status.",
            ("method", "operation", "status"),
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.watcher_last_success = _prom.Gauge(
            PREFIX + "watcher_last_success_timestamp_seconds",
            "Unix time of the last successful poll of a watched secret.",
            ("path",),
            registry=reg,
        )
        self.change_lag = _prom.Histogram(
            PREFIX + "listener_change_lag_seconds",
            "Seconds from a secret version's created_time to its listener callback returning.",
            ("path",),
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self._token: tuple[float | None, Clock] | None = None
        self._leases: dict[str, float] = {}
        reg.register(_Computed(self))

    def _path(self, path: str) -> str:
        if path in self._paths:
            return path
        with self._lock:
            if len(self._paths) >= self.max_paths:
                return OTHER
            self._paths.add(path)
        return path

    # --- Observer
    def cache_read(self, path: str, result: str) -> None:
        try:
            counts: dict[tuple[str, str], int] = self._local.counts
        except AttributeError:
            counts = self._local.counts = {}
            with self._lock:
                self._per_thread.append(counts)
        if path not in self._paths:
            path = self._path(path)
        key = (path, result)
        counts[key] = counts.get(key, 0) + 1

    def cache_reads(self) -> dict[tuple[str, str], int]:
        """``{(path, result): reads}`` so far, summed over threads."""
        with self._lock:
            tables = [dict(t) for t in self._per_thread]  # a dict copy is atomic
        total: dict[tuple[str, str], int] = {}
        for t in tables:
            for k, n in t.items():
                total[k] = total.get(k, 0) + n
        return total

    def vault_request(self, method: str, path: str, status: str, seconds: float) -> None:
        self.request_duration.labels(method, operation_of(path), status).observe(seconds)

    def token_issued(self, expires_at: float | None, clock: Clock) -> None:
        self._token = (expires_at, clock)

    def watcher_polled(self, path: str, when: float) -> None:
        self.watcher_last_success.labels(self._path(path)).set(when)

    def change_delivered(self, path: str, lag: float | None) -> None:
        if lag is not None:
            self.change_lag.labels(self._path(path)).observe(max(0.0, lag))

    def lease_changed(self, key: str, expires_wall: float | None) -> None:
        with self._lock:
            if expires_wall is None:
                self._leases.pop(key, None)
            else:
                self._leases[key] = expires_wall

    # --- scrape-time values
    def token_ttl(self) -> float | None:
        """Seconds left of the current token (``inf``: never expires; ``None``: none yet)."""
        t = self._token
        if t is None:
            return None
        expires_at, clock = t
        return math.inf if expires_at is None else expires_at - clock.monotonic()


class _Computed:
    """The gauges whose value is read when scraped: token TTL left, lease expiries."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        reads = CounterMetricFamily(
            PREFIX + "cache_reads",
            "Secret reads by how they were answered (hit, miss, stale, snapshot, failed).",
            labels=("path", "result"),
        )
        for (path, result), n in sorted(self._m.cache_reads().items()):
            reads.add_metric([path, result], n)
        yield reads
        ttl = GaugeMetricFamily(
            PREFIX + "token_ttl_seconds", "Seconds left of the current Vault token."
        )
        left = self._m.token_ttl()
        if left is not None:
            ttl.add_metric([], left)
        yield ttl
        leases = GaugeMetricFamily(
            PREFIX + "lease_expiry_timestamp_seconds",
            "Unix time at which the current lease of a dynamic secret ends.",
            labels=("path",),
        )
        with self._m._lock:
            current = sorted(self._m._leases.items())
        for key, at in current:
            leases.add_metric([key], at)
        yield leases


__all__ = ["LAG_BUCKETS", "REQUEST_BUCKETS", "ServiceMetrics", "operation_of"]
