"""Transit key rotation (``encryption_key``) against the real OpenBao transit engine.

Each test uses a transit key of its own; the ciphertext sources are dicts (the
caller's storage), registered by name or imported by reference. Nothing is mocked.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from maily_secrets.errors import CiphertextVersionTooOld
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.base import (
    RotationContext,
    RotationError,
    RotatorConfigError,
    rotator_for,
)
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rewrap import (
    CiphertextSource,
    Rewrapped,
    ciphertext_version,
    register_ciphertext_source,
    unregister_ciphertext_source,
)
from maily_secrets.rotation.rotators.encryption_key import TransitKeyRotator, rewrap_record_path
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.transit import Transit

from .conftest import Bao
from .kit.rotation import crash_engine_run, rotation_ctx
from .secrecy import assert_absent

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
CANARY = "CANARY-enc-4d1e-do-not-leak"


def uid() -> str:
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------------------- a source
class DictSource:
    """The caller's storage: id -> ciphertext, with compare-and-set writes."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data
        self.fail_after: int | None = None  # raise after writing this many items
        self.before_write: Callable[[Sequence[Rewrapped]], None] | None = None
        self.written = 0
        self.skipped = 0  # compare-and-set refused (the app changed the value)
        self.closed = 0

    async def batches(self, batch_size: int) -> AsyncIterator[list[tuple[str, str]]]:
        items = list(self.data.items())  # a snapshot, like a keyset-paginated SELECT
        for i in range(0, len(items), batch_size):
            yield items[i : i + batch_size]

    async def write(self, items: Sequence[Rewrapped]) -> None:
        if self.before_write is not None:
            self.before_write(items)
        for item in items:
            if self.fail_after is not None and self.written >= self.fail_after:
                # a storage error whose text holds data: must not reach reports or logs
                raise RuntimeError(f"storage down while writing {CANARY}")
            if self.data.get(item.id) == item.previous:
                self.data[item.id] = item.ciphertext
                self.written += 1
            else:
                self.skipped += 1

    async def aclose(self) -> None:
        self.closed += 1


STORES: dict[str, DictSource] = {}


def store_factory(ctx: RotationContext, store: str) -> DictSource:
    """An importable factory: ``tests.test_rotation_encryption_key:store_factory``."""
    return STORES[store]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
async def mount(bao: Bao) -> str:
    return await bao.new_kv_mount("re")


@pytest.fixture
async def vault(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with bao.client(kv_mount=mount) as c:
        yield c


@pytest.fixture
async def transit(vault: VaultClient) -> Transit:
    return Transit(vault, "transit")


@pytest.fixture
async def key(transit: Transit) -> str:
    k = f"enc-{uid()}"
    await transit.create_key(k)
    return k


@pytest.fixture
def registered() -> Iterator[Callable[[DictSource], str]]:
    names: list[str] = []

    def register(source: DictSource) -> str:
        name = f"dict-{uid()}"
        register_ciphertext_source(name, lambda ctx: source)
        names.append(name)
        return name

    yield register
    for n in names:
        unregister_ciphertext_source(n)


def make_ctx(
    vault: VaultClient,
    key: str,
    options: dict[str, Any] | None = None,
    grace: timedelta = timedelta(hours=1),
    prefix: str | None = None,
) -> RotationContext:
    return rotation_ctx(
        "encryption_key",
        vault,
        f"transit/keys/{key}",
        options=options,
        grace=grace,
        config=DEFAULT_CONFIG,
        prefix=prefix,
        logger="maily_secrets.rotation",
    )


async def fill(transit: Transit, key: str, n: int) -> tuple[DictSource, dict[str, bytes]]:
    plain = {f"row-{i:04d}": f"{CANARY}-{i}".encode() for i in range(n)}
    cts = await transit.encrypt_many(key, list(plain.values()))
    return DictSource(dict(zip(plain, cts, strict=True))), plain


async def assert_readable(
    transit: Transit, key: str, src: DictSource, plain: dict[str, bytes]
) -> None:
    ids = sorted(src.data)
    got = await transit.decrypt_many(key, [src.data[i] for i in ids])
    assert got == [plain[i] for i in ids]


def versions(src: DictSource) -> set[int | None]:
    return {ciphertext_version(ct) for ct in src.data.values()}


async def run_steps(rot: TransitKeyRotator, ctx: RotationContext) -> dict[str, Any]:
    await rot.check(ctx)
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.verify(ctx, pending)
    return pending


# ---------------------------------------------------------------------------- tests
async def test_registered_as_encryption_key() -> None:
    assert isinstance(rotator_for("encryption_key"), TransitKeyRotator)
    assert TransitKeyRotator.two_slots is False


async def test_rotation_bumps_the_version_and_old_ciphertexts_decrypt(
    vault: VaultClient, transit: Transit, key: str
) -> None:
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key)
    old = await transit.encrypt(key, CANARY)
    assert "v1 -> v2" in await rot.describe(ctx)
    created = await rot.created_at(ctx)
    assert created is not None and abs(created - datetime.now(UTC)) < timedelta(minutes=5)

    pending = await run_steps(rot, ctx)
    assert (pending["from_version"], pending["new_version"]) == (1, 2)
    assert_absent(CANARY, str(pending), "the pending state")
    assert await rot.promote(ctx, pending) == 2
    kv = await transit.key_versions(key)
    assert kv.latest == 2 and kv.min_decryption == 1
    assert ciphertext_version(await transit.encrypt(key, "x")) == 2
    assert await transit.decrypt(key, old) == CANARY.encode()
    # no rewrap sources: nothing to retire, older versions stay decryptable
    assert rot.retiring(ctx, pending) is None
    info = await transit.read_key(key)
    assert await rot.created_at(ctx) == datetime.fromtimestamp(int(info["keys"]["2"]), UTC)


async def test_apply_rotates_once_per_rotation(
    vault: VaultClient, transit: Transit, key: str
) -> None:
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key)
    pending = await rot.create_pending(ctx)
    await rot.apply(ctx, pending)
    await rot.apply(ctx, pending)  # a resumed apply: the key has v2 already
    await rot.verify(ctx, pending)
    await rot.verify(ctx, pending)
    assert (await transit.key_versions(key)).latest == 2
    # another rotation is another rotation
    second = await run_steps(rot, make_ctx(vault, key))
    assert second["new_version"] == 3
    assert (await transit.key_versions(key)).latest == 3


async def test_rewrap_moves_every_ciphertext_and_min_is_raised_after_grace(
    vault: VaultClient, transit: Transit, key: str, registered: Callable[[DictSource], str]
) -> None:
    src, plain = await fill(transit, key, 700)
    name = registered(src)
    outside = await transit.encrypt(key, "kept nowhere")  # a v1 ciphertext in no source
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key, {"rewrap_sources": [name], "rewrap_batch_size": 128})
    assert name in await rot.describe(ctx)
    pending = await run_steps(rot, ctx)
    assert await rot.promote(ctx, pending) == 2
    assert versions(src) == {2}
    assert src.written == 700 and src.closed >= 1
    await assert_readable(transit, key, src, plain)
    record = (await vault.kv.read(rewrap_record_path(ctx))).data
    assert record["complete"] is True and record["sources"][name]["rewrapped"] == 700
    assert record["sources"][name]["remaining"] == 0
    assert record["min_decryption_version_raised"] is False

    # during the grace period old ciphertexts still decrypt
    assert (await transit.key_versions(key)).min_decryption == 1
    assert await transit.decrypt(key, outside) == b"kept nowhere"
    retiring = rot.retiring(ctx, pending)
    assert retiring == {"mount": "transit", "key": key, "min_decryption_version": 2}

    # a straggler written with v1 during the grace period is rewrapped by the final sweep
    src.data["late"] = outside
    await rot.retire(ctx, retiring)
    assert (await transit.key_versions(key)).min_decryption == 2
    assert ciphertext_version(src.data["late"]) == 2
    await assert_readable(transit, key, src, {**plain, "late": b"kept nowhere"})
    with pytest.raises(CiphertextVersionTooOld):
        await transit.decrypt(key, outside)
    await rot.retire(ctx, retiring)  # idempotent
    assert (await vault.kv.read(rewrap_record_path(ctx))).data["min_decryption_version_raised"]


async def test_source_by_import_reference_with_options(
    vault: VaultClient, transit: Transit, key: str
) -> None:
    src, plain = await fill(transit, key, 10)
    store = f"s-{uid()}"
    STORES[store] = src
    try:
        options = {
            "rewrap_sources": [
                {
                    "source": "tests.test_rotation_encryption_key:store_factory",
                    "name": "messages",
                    "options": {"store": store},
                }
            ]
        }
        rot = TransitKeyRotator()
        ctx = make_ctx(vault, key, options)
        pending = await run_steps(rot, ctx)
        await rot.promote(ctx, pending)
    finally:
        del STORES[store]
    assert versions(src) == {2}
    await assert_readable(transit, key, src, plain)
    assert "messages" in (await vault.kv.read(rewrap_record_path(ctx))).data["sources"]


async def test_failing_source_midway_keeps_old_data_readable_and_resumes(
    vault: VaultClient,
    transit: Transit,
    key: str,
    registered: Callable[[DictSource], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, good_plain = await fill(transit, key, 50)
    bad, bad_plain = await fill(transit, key, 300)
    bad.fail_after = 120
    names = [registered(good), registered(bad)]
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key, {"rewrap_sources": names, "rewrap_batch_size": 100})
    caplog.set_level(logging.DEBUG)
    pending = await run_steps(rot, ctx)
    with pytest.raises(RotationError) as err:
        await rot.promote(ctx, pending)
    text = str(err.value)
    assert "incomplete" in text and names[1] in text and "min_decryption_version stays 1" in text
    assert_absent(CANARY, text, "the error")
    assert_absent(CANARY, caplog.text, "the log")
    kv = await transit.key_versions(key)
    assert kv.min_decryption == 1 and kv.latest == 2
    assert versions(good) == {2} and versions(bad) == {1, 2}
    await assert_readable(transit, key, good, good_plain)
    await assert_readable(transit, key, bad, bad_plain)  # nothing became unreadable
    record = (await vault.kv.read(rewrap_record_path(ctx))).data
    assert record["complete"] is False
    assert record["sources"][names[1]]["error"] == "RuntimeError"
    assert record["sources"][names[0]]["complete"] is True
    assert_absent(CANARY, str(record), "the record")

    # the storage is back: promote again (what a resumed run does) completes the rewrap
    bad.fail_after = None
    assert await rot.promote(ctx, pending) == 2
    assert versions(bad) == {2}
    assert (await transit.key_versions(key)).latest == 2  # not rotated again
    retiring = rot.retiring(ctx, pending)
    assert retiring is not None
    await rot.retire(ctx, retiring)
    assert (await transit.key_versions(key)).min_decryption == 2
    await assert_readable(transit, key, bad, bad_plain)


async def test_unrewrappable_ciphertext_blocks_min_decryption(
    vault: VaultClient, transit: Transit, key: str, registered: Callable[[DictSource], str]
) -> None:
    src, _ = await fill(transit, key, 20)
    other = f"other-{uid()}"
    await transit.create_key(other)
    src.data["foreign"] = await transit.encrypt(other, "made with another key")
    src.data["junk"] = "not a ciphertext"
    name = registered(src)
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key, {"rewrap_sources": [name]})
    pending = await run_steps(rot, ctx)
    with pytest.raises(RotationError, match="could not rewrap"):
        await rot.promote(ctx, pending)
    record = (await vault.kv.read(rewrap_record_path(ctx))).data["sources"][name]
    assert record["failed"] == 2 and sorted(record["failed_ids"]) == ["foreign", "junk"]
    assert record["remaining"] == 2
    # the good ones moved; min_decryption_version stays; a direct retire refuses too
    assert sum(ciphertext_version(ct) == 2 for ct in src.data.values()) == 20
    with pytest.raises(RotationError, match="not raising"):
        await rot.retire(ctx, {"mount": "transit", "key": key, "min_decryption_version": 2})
    assert (await transit.key_versions(key)).min_decryption == 1


async def test_concurrent_application_writes_are_not_overwritten(
    vault: VaultClient, transit: Transit, key: str, registered: Callable[[DictSource], str]
) -> None:
    src, plain = await fill(transit, key, 30)
    name = registered(src)
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key, {"rewrap_sources": [name]})
    pending = await run_steps(rot, ctx)
    fresh = await transit.encrypt(key, b"updated by the app")  # v2: the app's new value

    def app_update(items: Sequence[Rewrapped]) -> None:
        if src.before_write is not None:
            src.data["row-0003"] = fresh
            src.before_write = None

    src.before_write = app_update
    await rot.promote(ctx, pending)
    assert src.data["row-0003"] == fresh and src.skipped == 1
    await assert_readable(transit, key, src, {**plain, "row-0003": b"updated by the app"})


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"rewrap_sources": ["no.such.module:factory"]}, "cannot import"),
        ({"rewrap_sources": ["not-registered"]}, "neither registered"),
        ({"rewrap_sources": [{"source": 3}]}, "rewrap_sources[0]"),
        ({"rewrap_passes": 1}, "rewrap_passes"),
        ({"raise_min_decryption_version": "yes"}, "true or false"),
        ({"keys": "typo"}, "unknown option"),
        ({"key": "no-such-key-here"}, "not found"),
    ],
)
async def test_bad_configuration_is_a_clear_error_and_changes_nothing(
    vault: VaultClient, transit: Transit, key: str, options: dict[str, Any], expect: str
) -> None:
    rot = TransitKeyRotator()
    ctx = make_ctx(vault, key, options)
    with pytest.raises(RotatorConfigError) as err:
        await rot.check(ctx)
    assert expect in str(err.value)
    assert (await transit.key_versions(key)).latest == 1


async def test_derived_key_with_sources_is_refused(
    vault: VaultClient, transit: Transit, registered: Callable[[DictSource], str]
) -> None:
    k = f"derived-{uid()}"
    await transit.create_key(k, derived=True)
    ctx = make_ctx(vault, k, {"rewrap_sources": [registered(DictSource({}))]})
    with pytest.raises(RotatorConfigError, match="derived"):
        await TransitKeyRotator().check(ctx)


async def test_factory_returning_something_else_fails_the_rewrap(
    vault: VaultClient, transit: Transit, key: str
) -> None:
    name = f"bad-{uid()}"
    register_ciphertext_source(name, lambda ctx: object())
    try:
        rot = TransitKeyRotator()
        ctx = make_ctx(vault, key, {"rewrap_sources": [name]})
        pending = await run_steps(rot, ctx)
        with pytest.raises(RotationError, match="incomplete"):
            await rot.promote(ctx, pending)
    finally:
        unregister_ciphertext_source(name)
    assert not isinstance(object(), CiphertextSource)
    assert (await transit.key_versions(key)).min_decryption == 1


# ---------------------------------------------------------------------------- engine
def write_config(tmp_path: Path, vault: VaultClient, key: str, prefix: str, **opts: Any) -> Path:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["types"]["encryption_key"] = {
        "secret": f"transit/keys/{key}",
        "grace": "1h",
        "options": opts,
    }
    env = doc["environments"]["development"]
    env["state_prefix"] = prefix
    env["vault"] = {"kv_mount": vault.settings.kv_mount}
    path = tmp_path / f"rotation-{prefix}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_engine_failed_rewrap_is_reported_then_resumed_without_rotating_twice(
    vault: VaultClient,
    transit: Transit,
    key: str,
    registered: Callable[[DictSource], str],
    tmp_path: Path,
) -> None:
    src, plain = await fill(transit, key, 200)
    src.fail_after = 50
    name = registered(src)
    prefix = f"rot-{uid()}"
    cfg = RotationConfig.load(write_config(tmp_path, vault, key, prefix, rewrap_sources=[name]))

    report = await RotationEngine(cfg, "development", client=vault).run(["encryption_key"])
    (res,) = report.results
    assert res.status == "failed" and "incomplete" in res.reason and name in res.reason
    assert_absent(CANARY, res.reason, "the run report")
    state = (await vault.kv.read(KV2Path(vault.settings.kv_mount, f"{prefix}/encryption_key"))).data
    assert state["outcome"] == "in_progress" and state["step"] == "verified"
    assert (await transit.key_versions(key)).min_decryption == 1
    await assert_readable(transit, key, src, plain)

    src.fail_after = None
    report = await RotationEngine(cfg, "development", client=vault).run(["encryption_key"])
    assert report.results[0].status == "resumed", report.results[0].reason
    kv = await transit.key_versions(key)
    assert (kv.latest, kv.min_decryption) == (2, 1)  # rotated once; min waits for the grace
    assert versions(src) == {2}

    later = datetime.now(UTC) + timedelta(hours=2)
    engine = RotationEngine(cfg, "development", client=vault, now=lambda: later)
    report = await engine.run(["encryption_key"], due_only=True)
    assert report.results[0].status == "skipped"  # not due; the retirement ran first
    kv = await transit.key_versions(key)
    assert (kv.latest, kv.min_decryption) == (2, 2)
    await assert_readable(transit, key, src, plain)


@pytest.mark.parametrize("step", ["created", "applied", "verified", "promoted"])
async def test_crash_after_each_step_then_resume_rotates_once(
    bao: Bao, vault: VaultClient, transit: Transit, key: str, tmp_path: Path, step: str
) -> None:
    prefix = f"rot-{uid()}"
    cfg_path = write_config(tmp_path, vault, key, prefix)
    old = await transit.encrypt(key, CANARY)
    proc = crash_engine_run(bao, cfg_path, "encryption_key", step)
    assert proc.returncode == 70, proc.stderr[-2000:]
    state = (await vault.kv.read(KV2Path(vault.settings.kv_mount, f"{prefix}/encryption_key"))).data
    assert state["step"] == step and state["outcome"] == "in_progress"
    assert (await transit.key_versions(key)).latest == (1 if step == "created" else 2)

    report = await RotationEngine(RotationConfig.load(cfg_path), "development", client=vault).run(
        ["encryption_key"]
    )
    assert report.results[0].status == "resumed", report.results[0].reason
    kv = await transit.key_versions(key)
    assert kv.latest == 2 and kv.min_decryption == 1  # exactly one rotation
    assert await transit.decrypt(key, old) == CANARY.encode()
