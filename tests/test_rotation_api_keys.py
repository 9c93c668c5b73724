"""API keys rotation against the real OpenBao: internal keys with a dual-valid grace,
manual (third-party) keys never touched, vendor keys through a provider talking to a
local stand-in of a vendor API, and ``mailyctl secrets set``."""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from maily_secrets.api_keys import is_valid_internal_key, set_api_key, valid_internal_keys
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.base import RotationContext, rotator_for
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.api_keys import ApiKeysRotator, KeySpec
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.cli import run_mailyctl
from .secrecy import assert_absent, assert_differ, assert_same
from .ticker import Ticker

ROOT = Path(__file__).resolve().parents[1]
MANUAL = {
    "stripe": {
        "kind": "manual",
        "instructions": "Roll the key in the Stripe dashboard (Developers > API keys)",
    },
    "sendgrid": {"kind": "manual"},
    "openai": "manual",
}
INTERNAL = {"internal_service": {"kind": "internal", "bytes": 32}}


# ---------------------------------------------------------------------------- helpers
class Clock:
    """The engine's clock: real time shifted, so that keys become due and graces end."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, td: timedelta) -> None:
        self.offset += td


@pytest.fixture
async def mount(root: VaultClient) -> str:
    m = f"ak{uuid.uuid4().hex[:10]}"
    await root.write(f"sys/mounts/{m}", {"type": "kv", "options": {"version": "2"}})
    await root.kv.configure(m)
    return m


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    async with VaultClient(bao.settings(kv_mount=mount)) as c:
        yield c


def make_config(mount: str, types: Mapping[str, Any], interval: str = "90d") -> RotationConfig:
    return RotationConfig.model_validate(
        {
            "defaults": {"environment": "development", "intervals": dict.fromkeys(types, interval)},
            "types": dict(types),
            "environments": {"development": {"vault": {"kv_mount": mount}}},
        }
    )


def sample_keys() -> dict[str, str]:
    return {
        "stripe": "sk_live_" + secrets.token_hex(24),
        "sendgrid": "SG." + secrets.token_urlsafe(22) + "." + secrets.token_urlsafe(32),
        "openai": "sk-" + secrets.token_urlsafe(36),
        "internal_service": secrets.token_urlsafe(32),
    }


async def seed(client: VaultClient, mount: str, data: Mapping[str, Any]) -> KV2Path:
    path = KV2Path(mount, "api-keys")
    await client.kv.write(path, dict(data), cas=0)
    return path


def engine(cfg: RotationConfig, client: VaultClient, clock: Clock) -> RotationEngine:
    return RotationEngine(cfg, "development", client=client, actor="test@host", now=clock.now)


# ---------------------------------------------------------------------------- internal keys
async def test_internal_key_dual_valid_through_grace_then_retired(
    client: VaultClient, mount: str
) -> None:
    keys = sample_keys()
    path = await seed(client, mount, keys)
    cfg = make_config(
        mount,
        {
            "api_keys": {
                "secret": "api-keys",
                "grace": "1d",
                "options": {"scope": "automatic", "keys": {**MANUAL, **INTERNAL}},
            }
        },
    )
    clock = Clock(timedelta(days=91))  # 91 days after the secret was written: due
    eng = engine(cfg, client, clock)
    stale = keys["internal_service"]  # a holder that never refreshes
    stop = asyncio.Event()
    failures: list[str] = []
    checks = 0
    ticker = Ticker()

    async def verifier(check_stale: bool) -> None:
        """Each round: a holder presents the key it read last round; the verifier
        accepts whatever Vault says is valid at this moment."""
        nonlocal checks
        held = (await client.kv.read(path)).data["internal_service"]
        while not stop.is_set():
            fresh = (await client.kv.read(path)).data
            now = clock.now()
            if not is_valid_internal_key(fresh, "internal_service", held, now):
                failures.append("lagging holder rejected")
            if check_stale and not is_valid_internal_key(fresh, "internal_service", stale, now):
                failures.append("pre-rotation holder rejected")
            held = fresh["internal_service"]
            checks += 1
            ticker.tick()
            await asyncio.sleep(0.002)

    async def run_with_verifier(check_stale: bool, **kw: Any) -> Any:
        stop.clear()
        task = asyncio.create_task(verifier(check_stale))
        await ticker.rounds(3)  # the holder checked before the rotation...
        try:
            return await eng.run(["api_keys"], **kw)
        finally:
            await ticker.rounds(3)  # ...and after it
            stop.set()
            await task

    # 1. the rotation
    report = await run_with_verifier(True, due_only=True)
    (res,) = report.results
    assert res.status == "rotated", res.reason
    cur = await client.kv.read(path)
    assert cur.version == 2 and res.version == 2
    assert_differ(cur.data["internal_service"], stale, "new and old internal key")
    assert_same(cur.data["internal_service_previous"], stale, "previous internal key")
    until = datetime.fromisoformat(cur.data["internal_service_previous_valid_until"])
    assert timedelta(hours=23) < until - clock.now() <= timedelta(days=1)
    for name in ("stripe", "sendgrid", "openai"):
        assert_same(cur.data[name], keys[name], f"manual key {name}")
    assert "rotated_at.internal_service" in cur.custom_metadata
    assert cur.custom_metadata["rotated_by.internal_service"].startswith("rotation ")
    assert not any(k.startswith("rotated_at.stripe") for k in cur.custom_metadata)
    n_valid = len(valid_internal_keys(cur.data, "internal_service", clock.now()))
    assert n_valid == 2

    # 2. half a day later: not due, the grace is not over, the old key still verifies
    clock.advance(timedelta(hours=12))
    report = await run_with_verifier(True, due_only=True)
    assert report.results[0].status == "skipped"
    cur = await client.kv.read(path)
    assert cur.version == 2
    stale_ok = is_valid_internal_key(cur.data, "internal_service", stale, clock.now())
    assert stale_ok

    # 3. after the grace: the run retires the previous key (the type is not due)
    clock.advance(timedelta(hours=13))
    report = await run_with_verifier(False, due_only=True)
    assert report.results[0].status == "skipped"
    cur = await client.kv.read(path)
    assert cur.version == 3
    fields = sorted(cur.data)
    assert "internal_service_previous" not in fields
    assert "internal_service_previous_valid_until" not in fields
    stale_ok = is_valid_internal_key(cur.data, "internal_service", stale, clock.now())
    assert not stale_ok
    assert_same(
        valid_internal_keys(cur.data, "internal_service", clock.now()),
        [cur.data["internal_service"]],
        "valid internal keys after the grace",
    )
    state, _ = await eng.store.read("api_keys")
    assert state is not None and state.retiring == [] and state.outcome == "success"
    assert "internal_service_previous" not in str(state.model_dump())

    assert not failures, failures[:3]
    assert checks > 10


async def test_promote_is_idempotent(client: VaultClient, mount: str) -> None:
    """A resumed rotation may run promote again: the previous key must not be lost."""
    keys = sample_keys()
    path = await seed(client, mount, keys)
    cfg = make_config(
        mount, {"api_keys": {"secret": "api-keys", "grace": "1d", "options": {"keys": INTERNAL}}}
    )
    eng = engine(cfg, client, Clock())
    rotator = rotator_for("api_keys")
    ctx = eng._context("api_keys", "r1")
    pending = await rotator.create_pending(ctx)
    await rotator.apply(ctx, pending)
    await rotator.verify(ctx, pending)
    v1 = await rotator.promote(ctx, pending)
    v2 = await rotator.promote(ctx, pending)
    assert v1 == v2 == 2
    cur = await client.kv.read(path)
    assert_same(cur.data["internal_service_previous"], keys["internal_service"], "previous")
    assert_same(cur.data["internal_service"], pending["keys"]["internal_service"]["value"], "new")
    assert rotator.retiring(ctx, pending) is not None


def test_valid_internal_keys_helper() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    data = {
        "k": "new",
        "k_previous": "old",
        "k_previous_valid_until": (now + timedelta(hours=1)).isoformat(),
    }
    assert valid_internal_keys(data, "k", now) == ["new", "old"]
    assert valid_internal_keys(data, "k", now + timedelta(hours=2)) == ["new"]
    assert valid_internal_keys({"k": "new", "k_previous": "old"}, "k", now) == ["new"]
    assert is_valid_internal_key(data, "k", "old", now)
    assert not is_valid_internal_key(data, "k", "other", now)
    assert valid_internal_keys({}, "k", now) == []


# ---------------------------------------------------------------------------- manual keys
async def test_manual_keys_are_never_written_and_need_a_person(
    client: VaultClient, mount: str
) -> None:
    keys = sample_keys()
    path = await seed(client, mount, keys)
    all_keys = {**MANUAL, **INTERNAL}
    cfg = make_config(
        mount,
        {
            # the split: automatable keys first, then the manual ones of the same secret
            "api_keys": {
                "secret": "api-keys",
                "grace": "1d",
                "options": {"scope": "automatic", "keys": all_keys},
            },
            "api_keys_manual": {
                "secret": "api-keys",
                "rotator": "api_keys",
                "options": {"scope": "manual", "keys": all_keys},
            },
        },
    )
    clock = Clock(timedelta(days=91))
    eng = engine(cfg, client, clock)

    # the manual type alone: nothing written at all
    report = await eng.run(["api_keys_manual"], due_only=True)
    (res,) = report.results
    assert res.status == "action_required"
    assert report.ok  # a person is needed, but nothing failed
    assert (await client.kv.read(path)).version == 1
    assert (await eng.store.read("api_keys_manual"))[0] is None
    for name in ("stripe", "sendgrid", "openai"):
        assert f"mailyctl secrets set api-keys {name}" in res.reason
    assert "Roll the key in the Stripe dashboard (Developers > API keys)" in res.reason
    assert "internal_service" not in res.reason
    for v in keys.values():
        assert_absent(v, res.reason, "the reason")

    # dry run says the same
    plan = await eng.run(["api_keys_manual"], dry_run=True)
    assert plan.results[0].status == "action_required"

    # one run of both: the automatable keys are rotated first, then a person is asked
    report = await eng.run(None, due_only=True)
    assert [(r.type, r.status) for r in report.results] == [
        ("api_keys", "rotated"),
        ("api_keys_manual", "action_required"),
    ]
    meta = await client.kv.metadata(path)
    assert meta["current_version"] == 2  # the one version of the internal key's rotation
    for version in (1, 2):
        data = (await client.kv.read(path, version=version)).data
        for name in ("stripe", "sendgrid", "openai"):
            assert_same(data[name], keys[name], f"manual key {name} in version {version}")
        assert not any(k.startswith(("stripe_", "sendgrid_", "openai_")) for k in data)

    # a person stores new manual keys: they count as rotated, nothing is due any more
    new_values = {n: f"{n}-rolled-{secrets.token_hex(8)}" for n in ("stripe", "sendgrid")}
    for n, v in new_values.items():
        await set_api_key(
            client, path, KeySpec(n), v, actor="alice@laptop", grace=timedelta(0), now=clock.now()
        )
    report = await eng.run(["api_keys_manual"], due_only=True)
    assert report.results[0].status == "action_required"
    assert "openai" in report.results[0].reason and "stripe" not in report.results[0].reason
    await set_api_key(
        client,
        path,
        KeySpec("openai"),
        "sk-new",
        actor="alice@laptop",
        grace=timedelta(0),
        now=clock.now(),
    )
    report = await eng.run(["api_keys_manual"], due_only=True)
    assert report.results[0].status == "skipped", report.results[0].reason
    cur = await client.kv.read(path)
    assert cur.custom_metadata["rotated_by.stripe"].startswith("alice@laptop")
    for n, v in new_values.items():
        assert_same(cur.data[n], v, n)


async def test_single_type_mixed_and_all_manual(client: VaultClient, mount: str) -> None:
    keys = sample_keys()
    path = await seed(client, mount, keys)
    clock = Clock(timedelta(days=91))
    # no options: the guide's keys (stripe, sendgrid, openai manual; internal_service internal)
    cfg = make_config(mount, {"api_keys": {"secret": "api-keys", "grace": "1d"}})
    eng = engine(cfg, client, clock)
    plan = await eng.run(["api_keys"], dry_run=True)
    assert plan.results[0].status == "planned"
    assert "internal_service" in plan.results[0].reason
    assert "then ask a person for stripe, sendgrid, openai" in plan.results[0].reason

    # the follow-up a single mixed type reports after its automatable part (engine hook)
    rotator = rotator_for("api_keys")
    assert isinstance(rotator, ApiKeysRotator)
    ctx: RotationContext = eng._context("api_keys", "probe")
    pending = await rotator.create_pending(ctx)
    assert sorted(pending["keys"]) == ["internal_service"]
    assert pending["manual_due"] == ["stripe", "sendgrid", "openai"]
    note = await rotator.follow_up(ctx, pending)
    assert note is not None and "mailyctl secrets set api-keys stripe" in note

    # the engine rotates the automatable part and reports what a person must still do
    before = await client.kv.read(path)
    report = await eng.run(["api_keys"], due_only=True)
    res = report.results[0]
    assert res.status == "action_required" and res.version is not None
    assert "mailyctl secrets set api-keys stripe" in res.reason
    assert report.ok  # not a failure: the exit code stays 0, --notify tells the admins
    cur = await client.kv.read(path)
    assert cur.version > before.version
    assert cur.data["internal_service"] != before.data["internal_service"]
    for name in ("stripe", "sendgrid", "openai"):
        assert_same(cur.data[name], keys[name], name)

    # every key manual (one not even configured): action_required, no version
    other = KV2Path(mount, "api-keys-2")
    await client.kv.write(other, {**keys, "mailgun": "key-abc"}, cas=0)
    cfg2 = make_config(
        mount,
        {
            "vendor_keys": {
                "secret": "api-keys-2",
                "rotator": "api_keys",
                "options": {"keys": MANUAL},
            }
        },
    )
    report = await engine(cfg2, client, clock).run(["vendor_keys"], due_only=True)
    assert report.results[0].status == "action_required"
    reason = report.results[0].reason
    assert "mailgun" in reason and "internal_service" in reason  # unknown keys: manual
    assert "mailyctl secrets set api-keys-2 mailgun" in reason
    assert (await client.kv.read(other)).version == 1


async def test_bad_options_fail_before_anything_changes(client: VaultClient, mount: str) -> None:
    await seed(client, mount, sample_keys())
    cfg = make_config(
        mount,
        {
            "api_keys": {
                "secret": "api-keys",
                "options": {
                    "keys": {
                        "stripe": {"kind": "random"},
                        "internal_service": {"kind": "internal", "bytes": 4},
                        "x": {"kind": "provider", "provider": "no.such.module:Factory"},
                    }
                },
            }
        },
    )
    report = await engine(cfg, client, Clock(timedelta(days=91))).run(["api_keys"])
    res = report.results[0]
    assert res.status == "failed"
    assert "keys.stripe.kind" in res.reason and "keys.internal_service.bytes" in res.reason
    assert (await client.kv.read(KV2Path(mount, "api-keys"))).version == 1


# ---------------------------------------------------------------------------- provider keys
@dataclass
class Vendor:
    """A local stand-in of a vendor's key-management API (not Vault)."""

    admin_token: str = field(default_factory=lambda: "adm_" + secrets.token_hex(8))
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> secret, active
    fail_verify: bool = False  # new keys do not work (propagation failure)
    revoked_by_id: list[str] = field(default_factory=list)
    revoked_by_value: int = 0
    base_url: str = ""

    def issue(self, *, working: bool = True) -> tuple[str, str]:
        key_id = f"key_{len(self.keys)}"
        secret = "vk_" + secrets.token_urlsafe(24)
        self.keys[key_id] = {"secret": secret, "active": True, "working": working}
        return key_id, secret

    def active(self, secret: str) -> bool:
        return any(
            k["secret"] == secret and k["active"] and k["working"] for k in self.keys.values()
        )

    def app(self) -> web.Application:
        def admin(request: web.Request) -> None:
            if request.headers.get("Authorization") != f"Bearer {self.admin_token}":
                raise web.HTTPUnauthorized()

        async def create(request: web.Request) -> web.Response:
            admin(request)
            key_id, secret = self.issue(working=not self.fail_verify)
            return web.json_response({"id": key_id, "secret": secret}, status=201)

        async def me(request: web.Request) -> web.Response:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not self.active(token):
                raise web.HTTPUnauthorized()
            return web.json_response({"ok": True})

        async def delete(request: web.Request) -> web.Response:
            admin(request)
            key_id = request.match_info["key_id"]
            if key_id not in self.keys:
                raise web.HTTPNotFound()
            self.keys[key_id]["active"] = False
            self.revoked_by_id.append(key_id)
            return web.Response(status=204)

        async def revoke_value(request: web.Request) -> web.Response:
            admin(request)
            secret = (await request.json())["secret"]
            for k in self.keys.values():
                if k["secret"] == secret:
                    k["active"] = False
            self.revoked_by_value += 1
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/v1/keys", create)
        app.router.add_get("/v1/me", me)
        app.router.add_delete("/v1/keys/{key_id}", delete)
        app.router.add_post("/v1/keys/revoke", revoke_value)
        return app


@pytest.fixture
async def vendor() -> AsyncIterator[Vendor]:
    v = Vendor()
    runner = web.AppRunner(v.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    v.base_url = f"http://{host}:{port}"
    try:
        yield v
    finally:
        await runner.cleanup()


class VendorProvider:
    """An ApiKeyProvider for the stand-in; its admin token is read from Vault."""

    def __init__(self, *, name: str, options: Mapping[str, Any], ctx: RotationContext) -> None:
        self.name = name
        self.base_url = str(options["base_url"])
        self.admin_secret = str(options["admin_secret"])
        self.ctx = ctx
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def _admin(self) -> dict[str, str]:
        data = (await self.ctx.client.kv.read(self.ctx.secret_path(self.admin_secret))).data
        return {"Authorization": f"Bearer {data['token']}"}

    async def create_key(self, current: str | None) -> tuple[str, str | None]:
        async with self.session.post(f"{self.base_url}/v1/keys", headers=await self._admin()) as r:
            r.raise_for_status()
            body = await r.json()
        return str(body["secret"]), str(body["id"])

    async def verify(self, new_key: str) -> bool:
        async with self.session.get(
            f"{self.base_url}/v1/me", headers={"Authorization": f"Bearer {new_key}"}
        ) as r:
            return r.status == 200

    async def revoke(self, key_id_or_key: str) -> None:
        headers = await self._admin()
        if key_id_or_key.startswith("key_"):
            async with self.session.delete(
                f"{self.base_url}/v1/keys/{key_id_or_key}", headers=headers
            ) as r:
                if r.status != 404:  # already gone: fine
                    r.raise_for_status()
        else:
            async with self.session.post(
                f"{self.base_url}/v1/keys/revoke", headers=headers, json={"secret": key_id_or_key}
            ) as r:
                r.raise_for_status()

    async def aclose(self) -> None:
        await self.session.close()


async def test_provider_create_verify_promote_revoke(
    client: VaultClient, mount: str, vendor: Vendor
) -> None:
    _, k0 = vendor.issue()
    keys = sample_keys()
    path = await seed(client, mount, {**keys, "example_provider": k0})
    await client.kv.write(
        KV2Path(mount, "rotator/vendor-admin"), {"token": vendor.admin_token}, cas=0
    )
    cfg = make_config(
        mount,
        {
            "api_keys": {
                "secret": "api-keys",
                "grace": "1d",
                "options": {
                    "keys": {
                        **MANUAL,
                        "example_provider": {
                            "kind": "provider",
                            "provider": "tests.test_rotation_api_keys:VendorProvider",
                            "base_url": vendor.base_url,
                            "admin_secret": "rotator/vendor-admin",
                        },
                    }
                },
            }
        },
    )
    clock = Clock(timedelta(days=91))
    eng = engine(cfg, client, clock)
    stop = asyncio.Event()
    failures: list[int] = []
    calls = 0
    ticker = Ticker()

    async def consumer() -> None:
        """The application: calls the vendor with whatever key is in Vault."""
        nonlocal calls
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                key = (await client.kv.read(path)).data["example_provider"]
                async with s.get(
                    f"{vendor.base_url}/v1/me", headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    if r.status != 200:
                        failures.append(r.status)
                calls += 1
                ticker.tick()
                await asyncio.sleep(0.002)

    async def run(**kw: Any) -> Any:
        stop.clear()
        task = asyncio.create_task(consumer())
        await ticker.rounds(3)  # the application called before the rotation...
        try:
            return await eng.run(["api_keys"], **kw)
        finally:
            await ticker.rounds(3)  # ...and after it
            stop.set()
            await task

    # 1. rotation: the vendor issues key_1; the old key works until the grace is over
    report = await run(due_only=True)
    res = report.results[0]
    # the provider key rotated; the secret's other (manual) keys are reported to a person
    assert res.status == "action_required" and res.version is not None, res.reason
    assert "example_provider" not in res.reason
    cur = await client.kv.read(path)
    k1 = cur.data["example_provider"]
    assert_same(vendor.keys["key_1"]["secret"], k1, "promoted vendor key")
    assert_same(cur.data["example_provider_previous"], k0, "previous vendor key")
    assert cur.custom_metadata["key_id.example_provider"] == "key_1"
    alive = [vendor.active(k0), vendor.active(k1)]
    assert alive == [True, True]
    for name in ("stripe", "sendgrid", "openai"):
        assert_same(cur.data[name], keys[name], name)

    # 2. after the grace the old key is revoked (it had no recorded id: by value)
    clock.advance(timedelta(days=1, hours=1))
    report = await run(due_only=True)
    assert report.results[0].status == "skipped"
    alive = [vendor.active(k0), vendor.active(k1)]
    assert alive == [False, True]
    assert vendor.revoked_by_value == 1
    cur = await client.kv.read(path)
    assert "example_provider_previous" not in sorted(cur.data)

    # 3. an explicit rotation: key_2; key_1 is later revoked by its id
    report = await run()
    assert report.results[0].status == "action_required", report.results[0].reason
    assert report.results[0].version is not None
    k2 = (await client.kv.read(path)).data["example_provider"]
    assert_same(vendor.keys["key_2"]["secret"], k2, "second vendor key")
    clock.advance(timedelta(days=1, hours=1))
    await run(due_only=True)
    alive = [vendor.active(k2)]
    assert vendor.revoked_by_id == ["key_1"] and alive == [True]

    # 4. the vendor issues a key that does not work: rolled back, the new key revoked
    vendor.fail_verify = True
    before = await client.kv.read(path)
    report = await run()
    assert report.results[0].status == "rolled_back", report.results[0].reason
    assert vendor.revoked_by_id == ["key_1", "key_3"]
    after = await client.kv.read(path)
    assert after.version == before.version
    assert_same(after.data, before.data, "api-keys after a rollback")

    assert not failures, failures[:3]
    assert calls > 10


# ---------------------------------------------------------------------------- secrets set
@pytest.fixture
def cli_env(bao: Bao, mount: str, tmp_path: Path) -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "src/maily_secrets/rotation/default_config.yaml").read_text())
    doc["environments"]["development"]["vault"] = {"kv_mount": mount}
    doc["types"]["api_keys"]["grace"] = "1d"  # (the built-in config sets none)
    cfg = tmp_path / "rotation.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "MAILY_"))}
    env.update(
        VAULT_ADDR=bao.addr,
        VAULT_TOKEN=bao.token,
        MAILY_ROTATION_CONFIG=str(cfg),
        COLUMNS="200",
    )
    return env


def mailyctl(
    env: Mapping[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return run_mailyctl("secrets", *args, env=env, stdin=stdin)


async def test_secrets_set_stores_without_echo(
    client: VaultClient, mount: str, cli_env: dict[str, str]
) -> None:
    keys = sample_keys()
    path = await seed(client, mount, keys)
    canary = "sk_live_CANARY_" + secrets.token_hex(16)

    proc = await asyncio.to_thread(
        mailyctl, cli_env, "set", "api-keys", "stripe", stdin=canary + "\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert_absent(canary, proc.stdout + proc.stderr)
    assert "version 2" in proc.stdout
    cur = await client.kv.read(path)
    assert cur.version == 2
    assert_same(cur.data["stripe"], canary, "stored stripe key")
    for name in ("sendgrid", "openai", "internal_service"):
        assert_same(cur.data[name], keys[name], name)
    rotated = datetime.fromisoformat(cur.custom_metadata["rotated_at.stripe"])
    assert abs(datetime.now(UTC) - rotated) < timedelta(minutes=1)
    assert "secrets set" in cur.custom_metadata["rotated_by.stripe"]

    # an internal key set by hand keeps the previous one valid for the grace period
    internal = "int_" + secrets.token_hex(16)
    proc = await asyncio.to_thread(
        mailyctl, cli_env, "set", "api-keys", "internal_service", stdin=internal
    )
    assert proc.returncode == 0, proc.stderr
    cur = await client.kv.read(path)
    assert_same(cur.data["internal_service_previous"], keys["internal_service"], "previous")
    n_valid = len(valid_internal_keys(cur.data, "internal_service"))
    assert n_valid == 2

    # --new adds a manual key that is not in the config
    proc = await asyncio.to_thread(
        mailyctl, cli_env, "set", "api-keys", "mailgun", "--new", stdin="key-" + canary
    )
    assert proc.returncode == 0, proc.stderr
    assert_absent(canary, proc.stdout + proc.stderr)
    assert (await client.kv.read(path)).version == 4


async def test_secrets_set_refuses_bad_input(
    client: VaultClient, mount: str, cli_env: dict[str, str]
) -> None:
    path = await seed(client, mount, sample_keys())
    canary = "sk_live_CANARY_" + secrets.token_hex(16)
    cases: list[tuple[tuple[str, ...], str, str]] = [
        # the value on the command line: impossible, and never echoed
        (("set", "api-keys", "stripe", canary), canary, "never taken from the command line"),
        (("set", "api-keys", "stripe", "--value", canary), "", "never taken from the command line"),
        (("set", "api-keys", "stripe", f"--value={canary}"), "", "--value"),
        # a name that is not configured: the valid ones are listed
        (("set", "api-keys", "strip"), canary, "valid: internal_service, openai, sendgrid, stripe"),
        (("set", "api-keys", canary), canary, "--new"),
        # empty values
        (("set", "api-keys", "stripe"), "", "empty value"),
        (("set", "api-keys", "stripe"), " \n\n", "empty value"),
        (("set", "api-keys", "stripe"), "two words", "one line"),
        # another secret
        (("set", "config", "jwt_secret"), canary, "SECRET must be one of: api-keys"),
        # a reserved name even with --new
        (("set", "api-keys", "stripe_previous", "--new"), canary, "reserved"),
    ]
    for args, stdin, expect in cases:
        proc = await asyncio.to_thread(mailyctl, cli_env, *args, stdin=stdin)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, (args[:3], proc.returncode)
        assert expect in " ".join(out.split()), (args[:3], expect)
        assert_absent(canary, out)
    assert (await client.kv.metadata(path))["current_version"] == 1
    assert not (await client.kv.read(path)).custom_metadata

    help_text = (await asyncio.to_thread(mailyctl, cli_env, "set", "--help")).stdout
    assert "--new" in help_text and "--value" not in help_text


async def test_secrets_set_hidden_prompt_on_a_terminal(
    client: VaultClient, mount: str, cli_env: dict[str, str]
) -> None:
    import pty

    path = await seed(client, mount, sample_keys())
    canary = "sk_live_CANARY_" + secrets.token_hex(16)

    def run() -> tuple[int, str]:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "mailyctl.py"), "secrets", "set", "api-keys", "openai"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=cli_env,
            cwd=ROOT,
            start_new_session=True,  # no controlling terminal: getpass uses stdin's
        )
        os.close(slave)
        out = b""
        sent = 0
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # the child closed the terminal
                        break
                    if not chunk:
                        break
                    out += chunk
                # answer once echo is off: getpass writes its own " " after that
                prompts = out.count(b"(input hidden): ") + out.count(b"confirmation: ")
                while sent < min(prompts, 2):
                    os.write(master, canary.encode() + b"\n")
                    sent += 1
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        return proc.wait(timeout=30), out.decode(errors="replace")

    rc, out = await asyncio.to_thread(run)
    assert rc == 0, out.replace(canary, "***")
    assert_absent(canary, out, "the terminal")
    assert "version 2" in out
    assert_same((await client.kv.read(path)).data["openai"], canary, "stored openai key")
