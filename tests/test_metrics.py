"""Application metrics (``maily_secrets.metrics``) scraped after real reads of a real OpenBao.

Each test has its own ``CollectorRegistry``; time that must pass (cache TTL, staleness
bound) passes on a ManualClock, and Vault is made unreachable with a TCP proxy cut.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from maily_secrets.clock import ManualClock
from maily_secrets.errors import SecretNotFound, VaultUnavailable
from maily_secrets.metrics import ServiceMetrics, operation_of
from maily_secrets.service import VaultService
from maily_secrets.sync import SyncVaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive
from .kit.listeners import new_secret
from .netfault import TcpProxy
from .pg import PgServer, pg
from .test_database import engine

__all__ = ["pg"]  # the session fixture, imported for pytest


def reads(reg: CollectorRegistry, path: str, result: str) -> float:
    v = reg.get_sample_value("maily_secret_cache_reads_total", {"path": path, "result": result})
    return v or 0.0


def requests(reg: CollectorRegistry, method: str, operation: str, status: str) -> float:
    v = reg.get_sample_value(
        "maily_secret_vault_request_duration_seconds_count",
        {"method": method, "operation": operation, "status": status},
    )
    return v or 0.0


def test_operation_templates_hold_no_names_or_ids() -> None:
    assert operation_of("maily/data/config") == "maily/data/{name}"
    assert operation_of("maily/metadata/api-keys") == "maily/metadata/{name}"
    assert operation_of("transit/encrypt/user-data") == "transit/encrypt/{name}"
    assert operation_of("database/creds/app") == "database/creds/{name}"
    assert operation_of("sys/leases/lookup/database/creds/app/abc123") == "sys/leases/lookup"
    assert operation_of("sys/leases/renew") == "sys/leases/renew"
    assert operation_of("sys/health?standbyok=true") == "sys/health"
    assert operation_of("auth/token/renew-self") == "auth/token/renew-self"
    assert operation_of("auth/kubernetes/login") == "auth/kubernetes/login"
    assert operation_of("auth/approle/role/maily/secret-id") == "auth/approle/role"


def test_sync_api_hits_served_in_the_calling_thread_are_counted(bao: Bao) -> None:
    """The sync API answers fresh hits without the loop: they count all the same."""
    path = f"maily/data/metrics-sync-{uuid.uuid4().hex[:8]}"
    reg = CollectorRegistry()
    with SyncVaultService(bao.settings(cache_ttl=60), observer=ServiceMetrics(reg)) as svc:
        svc.put_secret(path, {"v": "1"}, cas=0)
        svc.invalidate(path)
        assert svc.get_secret(path) == {"v": "1"}  # a miss, on the loop
        for _ in range(3):
            assert svc.get_secret(path) == {"v": "1"}  # hits, in this thread
    assert (reads(reg, path, "miss"), reads(reg, path, "hit")) == (1, 3)


async def test_cache_hits_misses_stale_and_failed_reads_are_counted_per_path(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": "1"}, prefix="metrics")
    reg = CollectorRegistry()
    clock = ManualClock()
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    svc = VaultService(
        bao.settings(addr=proxy.addr, cache_ttl=10, max_staleness=100, max_retries=0),
        clock=clock,
        observer=ServiceMetrics(reg),
    )
    try:
        await svc.get_secret(path)
        await svc.get_secret(path)
        await svc.get_secret(path)
        assert (reads(reg, path, "miss"), reads(reg, path, "hit")) == (1, 2)
        assert requests(reg, "GET", "maily/data/{name}", "200") == 1

        await proxy.down()
        await clock.advance(11)  # past the TTL: Vault is asked, and is unreachable
        assert await svc.get_secret(path) == {"v": "1"}
        assert reads(reg, path, "stale") == 1
        assert requests(reg, "GET", "maily/data/{name}", "error") == 1

        await clock.advance(100)  # past the staleness bound: nothing servable
        with pytest.raises(VaultUnavailable):
            await svc.get_secret(path)
        assert reads(reg, path, "failed") == 1

        await proxy.up()
        assert await svc.get_secret(path) == {"v": "1"}
        assert reads(reg, path, "miss") == 2
    finally:
        await svc.close()
        await proxy.down()


async def test_request_histogram_labels_status_and_never_a_secret_name(
    bao: Bao, root: VaultClient
) -> None:
    name = f"metrics-{uuid.uuid4().hex[:10]}"
    canary = f"CANARY-{uuid.uuid4().hex}"
    await root.kv.write(f"maily/data/{name}", {"password": canary}, cas=0)
    await root.transit().create_key(f"metrics-{name}")
    reg = CollectorRegistry()
    svc = VaultService(bao.settings(max_retries=0), observer=ServiceMetrics(reg))
    try:
        await svc.get_secret(f"maily/data/{name}")
        with pytest.raises(SecretNotFound):
            await svc.get_secret(f"maily/data/absent-{name}")
        ct = await svc.encrypt_data(f"metrics-{name}", "hello")
        assert await svc.decrypt_data(f"metrics-{name}", ct) == "hello"
    finally:
        await svc.close()
    assert requests(reg, "GET", "maily/data/{name}", "200") == 1
    assert requests(reg, "GET", "maily/data/{name}", "404") == 1
    assert requests(reg, "POST", "transit/encrypt/{name}", "200") == 1
    assert requests(reg, "POST", "transit/decrypt/{name}", "200") == 1
    assert requests(reg, "GET", "auth/token/lookup-self", "200") == 1
    samples = [
        s
        for m in reg.collect()
        if m.name == "maily_secret_vault_request_duration_seconds"
        for s in m.samples
    ]
    assert samples and all(name not in str(s.labels) for s in samples)
    text = generate_latest(reg).decode()
    assert canary not in text
    assert "# TYPE maily_secret_vault_request_duration_seconds histogram" in text
    assert "# TYPE maily_secret_cache_reads_total counter" in text


async def test_token_ttl_left_is_computed_at_scrape_time(bao: Bao, root: VaultClient) -> None:
    r = await root.write("auth/token/create", {"ttl": "1h", "policies": ["default", "root"]})
    child = (r.body or {})["auth"]["client_token"]
    clock = ManualClock()
    reg = CollectorRegistry()
    metrics = ServiceMetrics(reg)
    client = VaultClient(bao.settings(token=child), clock=clock, observer=metrics)
    try:
        assert reg.get_sample_value("maily_secret_token_ttl_seconds") is None  # no token yet
        await client.read("sys/mounts")
        left = reg.get_sample_value("maily_secret_token_ttl_seconds")
        assert left is not None and 3500 < left <= 3600
        await clock.advance(600)
        later = reg.get_sample_value("maily_secret_token_ttl_seconds")
        assert later is not None and math.isclose(later, left - 600, abs_tol=1e-6)
    finally:
        await client.close()

    reg2 = CollectorRegistry()
    rooted = VaultClient(bao.settings(), observer=ServiceMetrics(reg2))
    try:
        await rooted.read("sys/mounts")
    finally:
        await rooted.close()
    assert reg2.get_sample_value("maily_secret_token_ttl_seconds") == math.inf  # never expires


async def test_watcher_last_success_and_change_lag_after_a_real_change(
    bao: Bao, root: VaultClient
) -> None:
    path = await new_secret(root, {"v": 0}, prefix="metrics-watch")
    reg = CollectorRegistry()
    clock = ManualClock(wall_start=time.time())
    svc = VaultService(
        # the change below is written around the service: seen at a full poll
        bao.settings(listener_interval=1.0, listener_full_poll_interval=1.0),
        clock=clock,
        observer=ServiceMetrics(reg),
    )
    got: list[dict[str, Any]] = []
    try:
        await svc.register_secret_listener(path, got.append)
        labels = {"path": path}
        await drive(
            clock,
            lambda: (
                reg.get_sample_value("maily_secret_watcher_last_success_timestamp_seconds", labels)
                is not None
            ),
            what="a successful poll",
        )
        written = time.time()
        await root.kv.write(path, {"v": 1}, cas=1)
        await drive(
            clock,
            lambda: (
                (
                    reg.get_sample_value("maily_secret_listener_change_lag_seconds_count", labels)
                    or 0
                )
                >= 1
            ),
            what="the change delivered",
        )
        assert got == [{"v": 1}]
        last = reg.get_sample_value("maily_secret_watcher_last_success_timestamp_seconds", labels)
        assert last is not None and last <= clock.time()
        lag = reg.get_sample_value("maily_secret_listener_change_lag_seconds_sum", labels)
        # From Vault's created_time of version 2 to the callback's return (real seconds).
        assert lag is not None and 0 <= lag <= time.time() - written + 1.0
    finally:
        await svc.close()


def test_library_imports_and_serves_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from maily_secrets.service import VaultService\n"
        "from maily_secrets import metrics\n"
        "VaultService()\n"
        "try:\n"
        "    metrics.ServiceMetrics()\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'maily-secrets[metrics]'" in out.stdout


async def test_lease_expiry_per_role_set_on_create_and_removed_on_close(
    bao: Bao, root: VaultClient, pg: PgServer
) -> None:
    db, role = await engine(root, pg, default_ttl=60, max_ttl=120)
    reg = CollectorRegistry()
    svc = VaultService(bao.settings(), observer=ServiceMetrics(reg))
    key = {"path": f"{db.mount}/creds/{role}"}
    before = time.time()
    try:
        creds = await svc.get_database_credentials(role, mount=db.mount)
        at = reg.get_sample_value("maily_secret_lease_expiry_timestamp_seconds", key)
        assert at is not None and before + 55 <= at <= time.time() + 60
        text = generate_latest(reg).decode()
        assert creds.password.get_secret_value() not in text
        assert creds.username not in text  # labelled by role, not by the user or lease id
    finally:
        await svc.close()
    assert reg.get_sample_value("maily_secret_lease_expiry_timestamp_seconds", key) is None


def test_cache_reads_counted_from_many_threads_lose_nothing() -> None:
    reg = CollectorRegistry()
    metrics = ServiceMetrics(reg)

    def work() -> None:
        for _ in range(20_000):
            metrics.cache_read("maily/data/config", "hit")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(50):  # scrapes while they count
        generate_latest(reg)
    for t in threads:
        t.join()
    assert reads(reg, "maily/data/config", "hit") == 160_000


def test_path_label_is_capped_at_max_paths() -> None:
    reg = CollectorRegistry()
    metrics = ServiceMetrics(reg, max_paths=3)
    for i in range(5):
        metrics.cache_read(f"maily/data/s{i}", "miss")
    assert [reads(reg, f"maily/data/s{i}", "miss") for i in range(3)] == [1, 1, 1]
    assert reads(reg, "other", "miss") == 2
