"""JWT signing key rotation against a real OpenBao: key set, rotator steps, consumers.

One KV v2 mount of this module's own (check-and-set required, like ``maily``);
every test starts from a freshly bootstrapped config (no ``jwt_kid``), written as
a new version of ``<mount>/data/config``. Times are injected (``ctx.now``) except
where a real ``VaultService`` has to see a grace period run out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from maily_secrets import jwt_keys as jk
from maily_secrets.bootstrap import sample_secrets
from maily_secrets.clock import ManualClock
from maily_secrets.errors import SecretNotFound
from maily_secrets.rotation.base import (
    RotationContext,
    RotationError,
    RotatorConfigError,
    rotator_for,
)
from maily_secrets.rotation.config import TypeConfig
from maily_secrets.rotation.rotators.jwt import JwtRotator
from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.rotation import Clock, rotation_ctx
from .kit.rotation import rotate as rotate_steps
from .secrecy import assert_absent, assert_same

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROTATION_LOGGER = "maily_secrets.rotation"
OTHER_KEYS = ("db_password", "redis_password", "smtp_password", "db_host", "smtp_port")


@pytest.fixture(scope="module")
async def mount(bao: Bao) -> AsyncIterator[str]:
    m = f"jwt-{uuid.uuid4().hex[:8]}"
    async with bao.client() as c:
        await c.write(f"sys/mounts/{m}", {"type": "kv", "options": {"version": "2"}})
        await c.kv.configure(m)
        await c.kv.write(f"{m}/data/config", sample_secrets()["config"], cas=0)
        yield m
        await c.delete(f"sys/mounts/{m}")


@pytest.fixture
async def client(bao: Bao, mount: str) -> AsyncIterator[VaultClient]:
    """A client of the module's mount, with a freshly bootstrapped config (no jwt_kid)."""
    async with bao.client(kv_mount=mount) as c:
        path = f"{mount}/data/config"
        cur = await c.kv.read(path)
        await c.kv.write(path, sample_secrets()["config"], cas=cur.version)
        yield c


def make_ctx(
    client: VaultClient,
    grace: timedelta | str = "1d",
    now: Clock | None = None,
    options: dict[str, Any] | None = None,
) -> RotationContext:
    return rotation_ctx(
        "jwt", client, "config", options=options, grace=grace, now=now, logger=ROTATION_LOGGER
    )


async def rotate(ctx: RotationContext) -> tuple[dict[str, Any], int]:
    return await rotate_steps(JwtRotator(), ctx)


async def config(client: VaultClient) -> tuple[dict[str, Any], int]:
    v = await client.kv.read(f"{client.settings.kv_mount}/data/config")
    return v.data, v.version


async def wait_for(pred: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ the key set model
async def test_bootstrapped_config_without_kid_signs_and_verifies(
    client: VaultClient, bao: Bao, mount: str
) -> None:
    cfg, _ = await config(client)
    assert jk.KID_KEY not in cfg and jk.PREVIOUS_KEY not in cfg
    key = jk.current_signing_key(cfg)
    assert key.kid == jk.current_signing_key(dict(cfg)).kid == jk.derived_kid(cfg["jwt_secret"])
    assert key.kid.startswith("sha256-") and len(key.kid) == len("sha256-") + 16
    assert_absent(cfg["jwt_secret"], key.kid + repr(key), "the derived kid / repr")
    assert jk.verification_keys(cfg, T0) == {key.kid: cfg["jwt_secret"]}

    token = jk.sign(cfg, {"sub": "u1"}, timedelta(hours=1), now=T0)
    assert jk.token_kid(token) == key.kid
    assert jk.verify(cfg, token, T0 + timedelta(minutes=59))["sub"] == "u1"
    with pytest.raises(jk.TokenExpired):
        jk.verify(cfg, token, T0 + timedelta(hours=1))
    # a token signed the guide's way (no kid) verifies with the pre-rotation key
    legacy = jwt.encode({"sub": "u0", "exp": time.time() + 60}, cfg["jwt_secret"], "HS256")
    assert jk.verify(cfg, legacy)["sub"] == "u0"

    async with VaultService(bao.settings(kv_mount=mount)) as svc:
        assert (await svc.get_jwt_signing_key()) == key
        assert await svc.get_jwt_verification_keys() == {key.kid: cfg["jwt_secret"]}


async def test_verify_refuses_alg_none_other_algs_unknown_kids_and_forgeries(
    client: VaultClient,
) -> None:
    cfg, _ = await config(client)
    key = jk.current_signing_key(cfg)
    exp = int(T0.timestamp()) + 600
    claims = {"sub": "admin", "exp": exp}

    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": key.kid})
    with pytest.raises(jk.JwtVerificationError, match="algorithm 'none' is refused"):
        jk.verify(cfg, unsigned, T0)
    hs512 = jwt.encode(claims, key.secret, algorithm="HS512", headers={"kid": key.kid})
    with pytest.raises(jk.JwtVerificationError, match="only HS256"):
        jk.verify(cfg, hs512, T0)
    unknown = jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": "nope"})
    with pytest.raises(jk.UnknownKeyId, match="'nope' is not in the key set"):
        jk.verify(cfg, unknown, T0)
    forged = jwt.encode(claims, jk.new_secret(), algorithm="HS256", headers={"kid": key.kid})
    with pytest.raises(jk.JwtVerificationError, match="signature does not verify"):
        jk.verify(cfg, forged, T0)
    no_exp = jwt.encode({"sub": "x"}, key.secret, algorithm="HS256", headers={"kid": key.kid})
    with pytest.raises(jk.JwtVerificationError, match="no 'exp' claim"):
        jk.verify(cfg, no_exp, T0)
    future = jwt.encode(
        {**claims, "nbf": exp - 60}, key.secret, algorithm="HS256", headers={"kid": key.kid}
    )
    with pytest.raises(jk.JwtVerificationError, match="not valid yet"):
        jk.verify(cfg, future, T0)
    for junk in ("", "a.b", "not a token"):
        with pytest.raises(jk.JwtVerificationError, match="malformed"):
            jk.verify(cfg, junk, T0)
    # every refusal is also a PyJWT InvalidTokenError, for existing handlers
    with pytest.raises(jwt.InvalidTokenError):
        jk.verify_with_keys({key.kid: key.secret}, unsigned, T0)

    # after a rotation, kid-less tokens are checked with the pre-rotation key only:
    # one signed with the new key (without its kid) is refused
    clock = Clock(T0)
    await rotate(make_ctx(client, now=clock))
    cfg2, _ = await config(client)
    kidless = jwt.encode(claims, cfg2["jwt_secret"], algorithm="HS256")
    with pytest.raises(jk.JwtVerificationError, match="signature does not verify"):
        jk.verify(cfg2, kidless, T0)
    with pytest.raises(jk.UnknownKeyId, match="no key id"):
        jk.verify(cfg2, kidless, T0 + timedelta(days=2))  # the old key's grace is over


def test_malformed_key_sets_fail_clearly_without_values() -> None:
    canary = "CANARY-" + secrets.token_urlsafe(40)
    base = {"jwt_secret": canary, "jwt_kid": "k1"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "no jwt_secret"),
        ({"jwt_secret": canary, "jwt_kid": 7}, "jwt_kid"),
        ({**base, "jwt_previous_keys": canary}, "not a list"),
        ({**base, "jwt_previous_keys": [{"kid": "k0", "secret": canary}]}, r"\[0\]\.retired_at"),
        (
            {
                **base,
                "jwt_previous_keys": [
                    {"kid": "k0", "secret": canary, "retired_at": canary, "verify_until": "x"}
                ],
            },
            "retired_at",
        ),
        ({**base, "jwt_next_key": {"kid": "k2"}}, "jwt_next_key"),
    ]
    for cfg, match in cases:
        with pytest.raises(jk.JwtKeyError, match=match) as info:
            jk.verification_keys(cfg, T0)
        assert_absent(canary, str(info.value) + repr(info.value), "a key set error")


# ------------------------------------------------------------------ the rotator
async def test_rotation_keeps_old_tokens_valid_through_grace_via_listener(
    client: VaultClient, bao: Bao, mount: str
) -> None:
    """A real consumer: a VaultService with a listener, real time, a 2 s grace."""
    svc = VaultService(bao.settings(kv_mount=mount, listener_interval=0.1))
    try:
        await svc.register_secret_listener(f"{mount}/data/config", lambda v: None)
        old_key = await svc.get_jwt_signing_key()
        old_cfg = await svc.get_config()
        before = jk.sign(old_cfg, {"sub": "before"}, 60)
        kidless = jwt.encode({"sub": "guide", "exp": time.time() + 60}, old_key.secret, "HS256")

        pending, _ = await rotate(make_ctx(client, grace="2s"))
        promoted_at = time.monotonic()

        async def switched() -> bool:
            return bool((await svc.get_jwt_signing_key()).kid == pending["kid"])

        await wait_for(switched)  # the listener updated the service's cache
        cfg = await svc.get_config()
        keys = await svc.get_jwt_verification_keys()
        assert set(keys) == {pending["kid"], old_key.kid}
        assert jk.verify(cfg, before)["sub"] == "before"  # within the grace
        assert jk.verify_with_keys(keys, kidless)["sub"] == "guide"
        after = jk.sign(cfg, {"sub": "after"}, 60)
        assert jk.token_kid(after) == pending["kid"] != old_key.kid
        assert jk.verify(cfg, after)["sub"] == "after"

        await asyncio.sleep(max(0.0, promoted_at + 2.2 - time.monotonic()))
        cfg = await svc.get_config()
        with pytest.raises(jk.RetiredKeyId, match=f"{old_key.kid}.*stopped verifying"):
            jk.verify(cfg, before)
        with pytest.raises(jk.UnknownKeyId):
            jk.verify_with_keys(await svc.get_jwt_verification_keys(), kidless)
        assert set(await svc.get_jwt_verification_keys()) == {pending["kid"]}
        assert jk.verify(cfg, after)["sub"] == "after"
    finally:
        await svc.close()


async def test_unknown_kid_refreshes_a_cached_config(
    client: VaultClient, bao: Bao, mount: str
) -> None:
    """Another instance signs with the new key while this one's cache is still old."""
    manual = ManualClock()
    async with VaultService(bao.settings(kv_mount=mount, cache_ttl=3600), clock=manual) as svc:
        old_kid = (await svc.get_jwt_signing_key()).kid
        pending, _ = await rotate(make_ctx(client))
        cfg, _ = await config(client)
        token = jk.sign(cfg, {"sub": "elsewhere"}, 60)
        kid = jk.token_kid(token)
        assert kid == pending["kid"]
        # the cache is an hour fresh: without a kid, nothing is re-read
        assert set(await svc.get_jwt_verification_keys()) == {old_kid}
        # a kid seen within a second of the last read: no re-read either (a flood of
        # forged kids costs Vault at most one read a second)
        path = f"{mount}/data/config"
        stale = svc.cache.peek(path)
        assert stale is not None
        svc.cache.put(path, svc.cache.entry(stale.value, stale.version))  # read just now
        assert set(await svc.get_jwt_verification_keys(kid=kid)) == {old_kid}
        await manual.advance(jk.UNKNOWN_KID_REFRESH_AFTER + 0.05)
        keys = await svc.get_jwt_verification_keys(kid=kid)
        assert set(keys) == {old_kid, kid}
        assert jk.verify_with_keys(keys, token)["sub"] == "elsewhere"
        assert (await svc.get_jwt_signing_key()).kid == kid  # the cache was refreshed


async def test_promote_changes_only_the_key_set_with_cas(client: VaultClient) -> None:
    before, _ = await config(client)
    clock = Clock(T0)
    ctx = make_ctx(client, now=clock)
    r = JwtRotator()
    pending = await r.create_pending(ctx)
    await r.apply(ctx, pending)
    await r.verify(ctx, pending)

    path = f"{client.settings.kv_mount}/data/config"

    async def operator(n: int) -> None:  # concurrent writers of other keys
        await client.kv.update(path, lambda cur: {**cur, f"feature_{n}": n})

    version, *_ = await asyncio.gather(r.promote(ctx, pending), *(operator(n) for n in range(5)))
    after, current = await config(client)
    assert isinstance(version, int) and current >= version
    for k in OTHER_KEYS:
        assert_same(after[k], before[k], k)
    assert {f"feature_{n}" for n in range(5)} <= set(after)  # no update lost
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed - {f"feature_{n}" for n in range(5)} == {
        "jwt_secret",
        "jwt_kid",
        "jwt_previous_keys",
    }
    assert after["jwt_kid"] == pending["kid"]
    assert jk.NEXT_KEY not in after
    (prev,) = after["jwt_previous_keys"]
    assert prev["kid"] == jk.derived_kid(before["jwt_secret"])
    assert_same(prev["secret"], before["jwt_secret"], "the previous key")
    assert jk.parse_time(prev["retired_at"]) == T0
    assert jk.parse_time(prev["verify_until"]) == T0 + timedelta(days=1)


async def test_two_rotations_keep_both_previous_keys_then_retire(client: VaultClient) -> None:
    clock = Clock(T0)
    cfg0, _ = await config(client)
    long = timedelta(days=3)  # tokens outliving the grace show which key stops verifying
    tok0 = jk.sign(cfg0, {"n": 0}, long, now=clock())

    p1, _ = await rotate(make_ctx(client, now=clock))
    cfg1, _ = await config(client)
    tok1 = jk.sign(cfg1, {"n": 1}, long, now=clock())
    assert jk.token_kid(tok1) == p1["kid"]

    clock.advance(hours=1)
    p2, _ = await rotate(make_ctx(client, now=clock))
    assert p2["replaces"] == p1["kid"] and p1["replaces"] == jk.token_kid(tok0)
    assert p1["kid"] < p2["kid"]  # sortable by time
    cfg2, v2 = await config(client)
    tok2 = jk.sign(cfg2, {"n": 2}, long, now=clock())
    assert [p["kid"] for p in cfg2["jwt_previous_keys"]] == [p1["replaces"], p1["kid"]]

    clock.advance(hours=1)
    for n, tok in enumerate((tok0, tok1, tok2)):
        assert jk.verify(cfg2, tok, clock())["n"] == n

    clock.t = T0 + timedelta(days=1, minutes=30)  # key 0's grace is over, key 1's is not
    with pytest.raises(jk.RetiredKeyId):
        jk.verify(cfg2, tok0, clock())
    assert jk.verify(cfg2, tok1, clock())["n"] == 1

    r = JwtRotator()
    ctx = make_ctx(client, now=clock)
    await r.retire(ctx, r.retiring(ctx, p1) or {})
    cfg3, v3 = await config(client)
    assert v3 == v2 + 1
    assert [p["kid"] for p in cfg3["jwt_previous_keys"]] == [p1["kid"]]
    await r.retire(ctx, r.retiring(ctx, p1) or {})  # nothing left to drop: no write
    assert (await config(client))[1] == v3
    # the engine retires after each rotation's grace: key 1's is not over yet
    with pytest.raises(RotationError, match=f"{p1['kid']} verifies until"):
        await r.retire(ctx, r.retiring(ctx, p2) or {})
    clock.advance(hours=1)
    await r.retire(ctx, r.retiring(ctx, p2) or {})
    cfg4, _ = await config(client)
    assert cfg4["jwt_previous_keys"] == []
    assert jk.verify(cfg4, tok2, clock())["n"] == 2
    with pytest.raises(jk.UnknownKeyId):
        jk.verify(cfg4, tok1, clock())


async def test_steps_are_idempotent(client: VaultClient) -> None:
    clock = Clock(T0)
    ctx = make_ctx(client, now=clock)
    r = JwtRotator()
    pending = await r.create_pending(ctx)
    _, v0 = await config(client)

    await r.apply(ctx, pending)
    await r.apply(ctx, pending)  # resumed after a crash: no second write
    cfg, v1 = await config(client)
    assert v1 == v0 + 1
    assert cfg[jk.NEXT_KEY]["kid"] == pending["kid"]
    # published for verification, not signing: tokens of the new key verify already
    nxt = {**cfg, "jwt_secret": pending["secret"], "jwt_kid": pending["kid"]}
    early = jk.sign(nxt, {"sub": "early"}, 60, now=clock())
    assert jk.verify(cfg, early, clock())["sub"] == "early"
    assert jk.current_signing_key(cfg).kid == pending["replaces"]

    await r.verify(ctx, pending)
    v2 = await r.promote(ctx, pending)
    clock.advance(minutes=5)
    assert await r.promote(ctx, pending) == v2  # runs again: writes nothing
    await r.apply(ctx, pending)  # a late re-run of apply does not unpromote
    await r.verify(ctx, pending)  # nor does verify fail on the promoted key set
    cfg, v = await config(client)
    assert v == v2 == v1 + 1
    assert cfg["jwt_kid"] == pending["kid"] and len(cfg["jwt_previous_keys"]) == 1
    assert jk.parse_time(cfg["jwt_previous_keys"][0]["retired_at"]) == T0


async def test_verify_failure_and_rollback_leave_the_current_key(client: VaultClient) -> None:
    ctx = make_ctx(client, now=Clock(T0))
    r = JwtRotator()
    before, v0 = await config(client)
    pending = await r.create_pending(ctx)
    with pytest.raises(RotationError, match="not published"):
        await r.verify(ctx, pending)  # apply never ran
    await r.apply(ctx, pending)
    tampered = {**pending, "secret": jk.new_secret()}
    with pytest.raises(RotationError, match="another secret") as info:
        await r.verify(ctx, tampered)
    for value in (pending["secret"], tampered["secret"], before["jwt_secret"]):
        assert_absent(value, str(info.value), "the verify error")
    await r.rollback(ctx, pending)
    await r.rollback(ctx, pending)  # idempotent
    after, v = await config(client)
    assert v == v0 + 2  # publish, unpublish
    assert_same(after, before, "config after rollback")


async def test_options_and_missing_secret_are_checked(client: VaultClient, bao: Bao) -> None:
    r = JwtRotator()
    with pytest.raises(RotatorConfigError, match="unknown option"):
        await r.check(make_ctx(client, options={"propogation": "1m"}))
    with pytest.raises(RotatorConfigError, match="not a duration"):
        await r.check(make_ctx(client, options={"propagation": "soon"}))
    async with bao.client(kv_mount=f"nope-{uuid.uuid4().hex[:6]}") as other:
        ctx = make_ctx(other)
        with pytest.raises(RotatorConfigError, match="does not exist"):
            await r.create_pending(ctx)
    assert isinstance(rotator_for("jwt"), JwtRotator)
    line = await r.describe(make_ctx(client))
    assert "stops signing and verifies for 1d more" in line


async def test_propagation_waits_after_publishing_and_extends_the_grace(
    client: VaultClient,
) -> None:
    ctx = make_ctx(client, grace="1h", options={"propagation": "0.4s"})
    r = JwtRotator()
    pending = await r.create_pending(ctx)
    start = time.monotonic()
    await r.apply(ctx, pending)
    assert time.monotonic() - start >= 0.35
    start = time.monotonic()
    await r.apply(ctx, pending)  # resumed: the wait has already passed
    assert time.monotonic() - start < 0.3
    await r.verify(ctx, pending)
    await r.promote(ctx, pending)
    cfg, _ = await config(client)
    (prev,) = cfg["jwt_previous_keys"]
    window = jk.parse_time(prev["verify_until"]) - jk.parse_time(prev["retired_at"])
    assert window == timedelta(hours=1, seconds=0.4)


async def test_no_secret_value_in_logs_or_errors(
    client: VaultClient, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "CANARY-" + secrets.token_urlsafe(48)
    path = f"{client.settings.kv_mount}/data/config"
    cur = await client.kv.read(path)
    await client.kv.write(path, {**cur.data, "jwt_secret": canary}, cas=cur.version)
    caplog.set_level(logging.DEBUG)
    clock = Clock(T0)
    texts: list[str] = []
    r = JwtRotator()
    ctx = make_ctx(client, now=clock)
    pending = await r.create_pending(ctx)
    texts.append(repr(jk.SigningKey(pending["kid"], pending["secret"])))
    await r.apply(ctx, pending)
    await r.verify(ctx, pending)
    await r.promote(ctx, pending)
    texts.append(await r.describe(ctx))
    cfg, _ = await config(client)
    old = jk.sign({"jwt_secret": canary}, {"sub": "x"}, 60, now=clock())
    refusals: list[Callable[[], object]] = [
        lambda: jk.verify(cfg, old, clock() + timedelta(days=2)),  # retired key
        lambda: jk.verify({"jwt_secret": pending["secret"]}, old, clock()),  # unknown kid
        lambda: jk.verify_with_keys({jk.token_kid(old) or "": pending["secret"]}, old, clock()),
    ]
    for bad in refusals:
        with pytest.raises(jk.JwtVerificationError) as info:
            bad()
        texts += [str(info.value), repr(info.value)]
    for step in (r.verify, r.promote):
        with pytest.raises(RotationError) as rinfo:
            await step(ctx, {**pending, "secret": canary})
        texts.append(str(rinfo.value))
    text = "\n".join([caplog.text, *texts])
    assert "JWT key" in caplog.text  # the steps did log
    for value in (canary, pending["secret"]):
        assert_absent(value, text, "logs and error messages")


async def test_missing_config_is_a_clear_error(client: VaultClient) -> None:
    with pytest.raises(SecretNotFound):
        await client.kv.read(f"{client.settings.kv_mount}/data/absent")
    ctx = make_ctx(client)
    ctx.type_config = TypeConfig(secret="absent", grace="1d")
    with pytest.raises(RotatorConfigError, match="absent does not exist"):
        await JwtRotator().check(ctx)
