"""vault_service against a real OpenBao: cache, single-flight, stale-if-error, snapshot."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.clock import ManualClock
from maily_secrets.errors import InvalidPath, SecretNotFound, VaultUnavailable
from maily_secrets.service import VaultService
from maily_secrets.snapshot import SnapshotStore, generate_key
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .secrecy import assert_absent, assert_same


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def make_secret(root: VaultClient, data: dict[str, Any]) -> str:
    name = unique()
    await root.kv.write(f"maily/data/{name}", data, cas=0)
    return f"maily/data/{name}"


async def test_single_flight_one_request_for_concurrent_misses(bao: Bao, root: VaultClient) -> None:
    path = await make_secret(root, {"k": "v"})
    svc = VaultService(bao.settings())
    try:
        before = bao.audit_requests(path)
        results = await asyncio.gather(*(svc.get_secret(path) for _ in range(100)))
        assert all(r == {"k": "v"} for r in results)
        # The audit device is the server's own count of what it received.
        assert await bao.settled_audit_count(path, before + 1) == before + 1
        assert svc.client.stats["GET"] == 2  # token lookup-self + one read
    finally:
        await svc.close()


async def test_callers_cannot_corrupt_the_cache(bao: Bao, root: VaultClient) -> None:
    path = await make_secret(root, {"a": "1", "nested": {"x": ["y"]}})
    svc = VaultService(bao.settings())
    try:
        first = await svc.get_secret(path)
        first["a"] = "changed"
        first["nested"]["x"].append("z")
        first["new"] = True
        assert await svc.get_secret(path) == {"a": "1", "nested": {"x": ["y"]}}

        cfg = await svc.get_config()
        cfg.clear()
        assert "db_host" in await svc.get_config()

        aws = await svc.get_credentials("aws")
        aws["aws_access_key"] = "tampered"
        assert (await svc.get_credentials("aws"))["aws_access_key"] != "tampered"
    finally:
        await svc.close()


async def test_ttl_expiry_refetches(bao: Bao, root: VaultClient) -> None:
    path = await make_secret(root, {"v": "1"})
    clock = ManualClock()
    svc = VaultService(bao.settings(cache_ttl=30), clock=clock)
    try:
        assert await svc.get_secret(path) == {"v": "1"}
        await root.kv.write(path, {"v": "2"}, cas=1)
        await clock.advance(29.9)
        assert await svc.get_secret(path) == {"v": "1"}  # still fresh in the cache
        await clock.advance(0.2)
        assert await svc.get_secret(path) == {"v": "2"}
    finally:
        await svc.close()


async def test_missing_secret_raises_not_found(bao: Bao, root: VaultClient) -> None:
    svc = VaultService(bao.settings())
    try:
        with pytest.raises(SecretNotFound, match="maily/data/does-not-exist"):
            await svc.get_secret("maily/data/does-not-exist")
        with pytest.raises(SecretNotFound, match=r"'nosuch'.*aws"):
            await svc.get_credentials("nosuch")
        # a deleted (latest version) secret is not found either, not {}
        path = await make_secret(root, {"k": "v"})
        await root.request("DELETE", path)
        with pytest.raises(SecretNotFound):
            await svc.get_secret(path)
        # SecretNotFound is a KeyError too, for dict-minded callers
        assert issubclass(SecretNotFound, KeyError)
    finally:
        await svc.close()


BAD_PATHS = [
    "",
    "maily/../sys/seal",
    "../maily/data/config",
    "maily/./data/config",
    "maily//data/config",
    "/maily/data/config",
    "maily/data/config/",
    "http://evil.example/v1/maily/data/config",
    "https://evil.example",
    "//evil.example/x",
    "maily/data/con\x00fig",
    "maily/data/con\nfig",
    "maily/data/con\x1bfig",
    "maily/data/config?version=1",
    "maily/data/config#x",
    "maily/data/%2e%2e/x",
    "maily\\data\\config",
    "maily/data/" + "x" * 2000,
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_bad_paths_are_refused_before_any_request(bao: Bao, path: str) -> None:
    svc = VaultService(bao.settings())
    try:
        with pytest.raises(InvalidPath) as ei:
            await svc.get_secret(path)
        assert "\x00" not in str(ei.value) and "\n" not in str(ei.value)
        assert sum(svc.client.stats.values()) == 0
    finally:
        await svc.close()


async def test_non_string_path_is_invalid(bao: Bao) -> None:
    svc = VaultService(bao.settings())
    try:
        with pytest.raises(InvalidPath):
            await svc.get_secret(["maily", "data"])  # type: ignore[arg-type]
        with pytest.raises(InvalidPath):
            await svc.get_credentials("")
    finally:
        await svc.close()


async def test_stale_if_error_while_the_server_is_stopped(
    private_bao: Bao, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    svc = VaultService(
        private_bao.settings(cache_ttl=5, max_staleness=60, max_retries=1, retry_base_delay=0.01),
        clock=clock,
    )
    try:
        config = await svc.get_config()
        await clock.advance(6)  # the entry is now expired
        private_bao.server.stop()
        caplog.set_level(logging.WARNING, logger="maily_secrets")
        assert_same(await svc.get_config(), config, "config")
        assert_same(await svc.get_config(), config, "config")
        warnings = [r for r in caplog.records if "serving last known value" in r.getMessage()]
        assert len(warnings) == 1  # warn once per outage, not per call
        # a path never read before has nothing to fall back on
        with pytest.raises(VaultUnavailable, match="maily/data/api-keys"):
            await svc.get_api_keys()
    finally:
        await svc.close()


async def test_staleness_is_bounded(private_bao: Bao) -> None:
    clock = ManualClock()
    svc = VaultService(
        private_bao.settings(cache_ttl=1, max_staleness=120, max_retries=0), clock=clock
    )
    try:
        await svc.get_config()
        private_bao.server.stop()
        await clock.advance(119)
        await svc.get_config()  # expired, but within max_staleness
        await clock.advance(2)
        with pytest.raises(VaultUnavailable):
            await svc.get_config()
    finally:
        await svc.close()


async def test_restart_during_outage_starts_from_encrypted_snapshot(
    private_bao: Bao, tmp_path: Path
) -> None:
    snap = tmp_path / "snap" / "secrets.snapshot"
    key = generate_key()
    settings = private_bao.settings(
        snapshot_path=snap, snapshot_key=key, max_retries=0, max_staleness=600
    )
    first = VaultService(settings)
    config = await first.get_config()
    creds = await first.get_credentials("aws")
    await first.close()  # flushes the snapshot
    assert snap.exists()
    assert oct(snap.stat().st_mode & 0o777) == "0o600"
    raw = snap.read_bytes()
    assert_absent(config["db_password"], raw.decode("latin-1"), "the snapshot file")

    private_bao.server.stop()
    # "restart": a brand-new service in a process that never saw Vault up
    second = VaultService(settings)
    try:
        assert_same(await second.get_config(), config, "config")
        assert_same(await second.get_credentials("aws"), creds, "creds")
    finally:
        await second.close()

    wrong = VaultService(
        private_bao.settings(
            snapshot_path=snap, snapshot_key=generate_key(), max_retries=0, max_staleness=600
        )
    )
    try:
        with pytest.raises(VaultUnavailable):
            await wrong.get_config()
    finally:
        await wrong.close()


async def test_access_log_one_event_per_miss_and_error_one_per_path_for_hits_no_values(
    bao: Bao, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="maily_secrets.access")
    svc = VaultService(bao.settings())
    try:
        cfg = await svc.get_config()
        await svc.get_config()
        with pytest.raises(SecretNotFound):
            await svc.get_secret("maily/data/absent-" + uuid.uuid4().hex)
    finally:
        await svc.close()
    events = [r for r in caplog.records if r.name == "maily_secrets.access"]
    assert [(e.cache, e.outcome) for e in events] == [  # type: ignore[attr-defined]
        ("miss", "ok"),
        ("miss", "not_found"),
        ("hit", "ok"),  # hits: one aggregate per path per interval, written by close()
    ]
    assert events[-1].count == 1  # type: ignore[attr-defined]
    first = events[0]
    assert first.path == "maily/data/config"  # type: ignore[attr-defined]
    assert first.keys == sorted(cfg)  # type: ignore[attr-defined]
    assert first.duration_ms >= 0  # type: ignore[attr-defined]
    text = caplog.text + " ".join(str(e.__dict__) for e in events)
    for v in cfg.values():
        if isinstance(v, str) and len(v) > 12:
            assert_absent(v, text, "the access log")


async def test_closed_service_can_be_used_again(bao: Bao) -> None:
    svc = VaultService(bao.settings())
    await svc.get_config()
    await svc.close()
    await svc.close()
    assert "db_host" in await svc.get_config()
    await svc.close()


def test_environment_is_read_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = VaultService()
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("MAILY_SECRETS_CACHE_TTL", "5")
    assert svc.settings.addr == "http://127.0.0.1:1"
    assert svc.settings.cache_ttl == 5


async def test_a_cancelled_caller_does_not_cancel_the_load_for_others(
    bao: Bao, root: VaultClient
) -> None:
    path = await make_secret(root, {"k": "v"})
    svc = VaultService(bao.settings())
    try:
        first = asyncio.create_task(svc.get_secret(path))
        await asyncio.sleep(0)  # the first caller starts the load
        others = [asyncio.create_task(svc.get_secret(path)) for _ in range(5)]
        await asyncio.sleep(0)
        first.cancel()  # e.g. its HTTP request timed out
        results = await asyncio.gather(*others)
        assert results == [{"k": "v"}] * 5
        assert first.cancelled()
        assert not svc.cache._inflight and not svc.cache._handovers  # nothing orphaned
        # the cancelled request died with its caller: the others' load sent it once more
        assert svc.client.stats["GET"] <= 3  # token lookup-self + at most two reads
    finally:
        await svc.close()


async def test_a_cancelled_lone_miss_leaves_no_load_behind(bao: Bao, root: VaultClient) -> None:
    path = await make_secret(root, {"k": "v"})
    svc = VaultService(bao.settings())
    try:
        await svc.get_config()  # logged in, a connection in the pool
        first = asyncio.create_task(svc.get_secret(path))
        await asyncio.sleep(0)  # its request is on the wire
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not svc.cache._inflight and not svc.cache._handovers
        assert svc.cache.peek(path) is None
        assert await svc.get_secret(path) == {"k": "v"}  # the next miss loads anew
    finally:
        await svc.close()


async def test_snapshot_writes_are_coalesced(bao: Bao, root: VaultClient, tmp_path: Path) -> None:
    """Many misses in a burst give a few snapshot writes, not one per miss; close() flushes."""
    paths = [await make_secret(root, {"i": i}) for i in range(30)]
    snap = tmp_path / "s.snapshot"
    key = generate_key()
    svc = VaultService(bao.settings(snapshot_path=snap, snapshot_key=key, snapshot_interval=60))
    writes = 0
    store = svc._snapshot_store()
    assert store is not None
    original = store.save

    def counting_save(entries: dict[str, dict[str, Any]]) -> None:
        nonlocal writes
        writes += 1
        original(entries)

    store.save = counting_save  # type: ignore[method-assign]
    for p in paths:
        await svc.get_secret(p)
    await svc.close()
    assert 1 <= writes <= 3
    assert set(paths) <= set(SnapshotStore(snap, key).load())  # close() wrote the last ones
