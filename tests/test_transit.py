"""Transit engine layer against the real OpenBao dev server (nothing mocked)."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

from maily_secrets.dev.server import bao_binary
from maily_secrets.errors import (
    CiphertextVersionTooOld,
    DecryptionFailed,
    InvalidCiphertext,
    InvalidPath,
    SecretNotFound,
    TransitContextError,
    TransitError,
    TransitKeyNotFound,
    VaultError,
    VaultRequestError,
)
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.transit import KeyVersions, Transit

from .conftest import Bao

CANARY = "CANARY-7f3a9-do-not-leak"
CANARY_CTX = "CTXCANARY-91b2-do-not-leak"


def name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def transit(root: VaultClient) -> Transit:
    return Transit(root)


@pytest.fixture
async def key(transit: Transit) -> str:
    k = name()
    await transit.create_key(k)
    return k


@pytest.fixture
async def derived_key(transit: Transit) -> str:
    k = name("d")
    await transit.create_key(k, derived=True)
    return k


@pytest.fixture
async def own_mount(root: VaultClient) -> AsyncIterator[str]:
    """A transit mount of the test's own, for mount-wide settings (upsert)."""
    mount = name("transit")
    await root.write(f"sys/mounts/{mount}", {"type": "transit"})
    try:
        yield mount
    finally:
        await root.delete(f"sys/mounts/{mount}")


def texts_of(exc: BaseException) -> str:
    """Every text an exception (and what it chains to) exposes."""
    parts: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), str(getattr(e, "detail", "")), str(e.args)]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def assert_no_canary(exc: BaseException) -> None:
    text = texts_of(exc)
    for secret in (CANARY, CANARY_CTX):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode() not in text


async def audited(bao: Bao, path: str, expected: int) -> int:
    """The server's count of requests to ``path`` once its audit log caught up."""
    return await bao.settled_audit_count(path, expected)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "value",
    [
        "hello",
        "",
        "héllo wörld ✉️ 日本語 🚀",
        b"plain bytes",
        b"",
        b"\xff\xfe\x00\x80 not utf-8 \xc3\x28",
        bytes(range(256)),
    ],
    ids=["str", "empty-str", "unicode", "bytes", "empty-bytes", "non-utf8", "all-bytes"],
)
async def test_round_trip(transit: Transit, key: str, value: str | bytes) -> None:
    ct = await transit.encrypt(key, value)
    assert ct.startswith("vault:v1:")
    expected = value.encode() if isinstance(value, str) else value
    assert await transit.decrypt(key, ct) == expected


async def test_round_trip_bytes_like(transit: Transit, key: str) -> None:
    ct = await transit.encrypt(key, bytearray(b"abc"))  # type: ignore[arg-type]
    assert await transit.decrypt(key, ct) == b"abc"


async def test_many_round_trip_mixed(transit: Transit, key: str) -> None:
    values: list[str | bytes] = ["a", b"", "日本", b"\xff\x00", "", "x" * 10_000]
    cts = await transit.encrypt_many(key, values)
    assert len(cts) == len(values) and all(c.startswith("vault:v1:") for c in cts)
    out = await transit.decrypt_many(key, cts)
    assert out == [v.encode() if isinstance(v, str) else v for v in values]
    assert await transit.encrypt_many(key, []) == []
    assert await transit.decrypt_many(key, []) == []


# ---------------------------------------------------------------------------- derived keys
async def test_derived_key_context(transit: Transit, derived_key: str) -> None:
    ct = await transit.encrypt(derived_key, CANARY, context="tenant-1")
    assert await transit.decrypt(derived_key, ct, context=b"tenant-1") == CANARY.encode()

    with pytest.raises(DecryptionFailed) as wrong:
        await transit.decrypt(derived_key, ct, context=CANARY_CTX)
    assert isinstance(wrong.value, InvalidCiphertext)
    assert "context differs" in str(wrong.value)
    assert_no_canary(wrong.value)

    with pytest.raises(TransitContextError) as missing:
        await transit.decrypt(derived_key, ct)
    assert "context is required" in str(missing.value)
    with pytest.raises(TransitContextError):
        await transit.encrypt(derived_key, CANARY)
    with pytest.raises(TransitContextError):
        await transit.encrypt_many(derived_key, [CANARY, CANARY])


async def test_derived_key_batch_contexts(transit: Transit, derived_key: str) -> None:
    values = [f"v{i}" for i in range(600)]
    contexts = [f"user-{i}" for i in range(600)]
    cts = await transit.encrypt_many(derived_key, values, context=contexts)
    out = await transit.decrypt_many(derived_key, cts, context=contexts)
    assert out == [v.encode() for v in values]
    # one context for all items
    same = await transit.encrypt_many(derived_key, values[:3], context=b"shared")
    assert await transit.decrypt_many(derived_key, same, context="shared") == [
        b"v0",
        b"v1",
        b"v2",
    ]
    # one wrong context among many: the error names its index
    bad = list(contexts)
    bad[417] = CANARY_CTX
    with pytest.raises(DecryptionFailed) as err:
        await transit.decrypt_many(derived_key, cts, context=bad)
    assert err.value.index == 417 and err.value.failed == 1
    assert "item 417 of 600" in str(err.value)
    assert_no_canary(err.value)
    # a context count that does not match the items is refused before any request
    with pytest.raises(ValueError, match="2 contexts for 3 items"):
        await transit.encrypt_many(derived_key, ["a", "b", "c"], context=["x", "y"])


async def test_context_chunks_respect_the_string_limit(
    transit: Transit, derived_key: str, bao: Bao
) -> None:
    """With a context an item costs 4 JSON strings: 250 per batch would be refused
    (limit 1000 strings, 249 items); the chunk shrinks to 224."""
    n = 1000
    cts = await transit.encrypt_many(derived_key, ["x"] * n, context="c")
    assert len(cts) == n
    assert await audited(bao, f"transit/encrypt/{derived_key}", 5) == math.ceil(n / 224)


# ---------------------------------------------------------------------------- batches
async def test_ten_thousand_items_chunked_in_order(transit: Transit, key: str, bao: Bao) -> None:
    n = 10_000
    values = [f"secret-{i:05d}-{uuid.uuid4().hex}" for i in range(n)]
    cts = await transit.encrypt_many(key, values)
    assert len(cts) == n and len(set(cts)) == n
    out = await transit.decrypt_many(key, cts)
    assert out == [v.encode() for v in values]  # order preserved across concurrent chunks

    expected = math.ceil(n / transit.batch_size)  # 40 requests of 250 items
    assert await audited(bao, f"transit/encrypt/{key}", expected) == expected
    assert await audited(bao, f"transit/decrypt/{key}", expected) == expected


async def test_batch_size_is_honoured_and_capped(root: VaultClient, key: str, bao: Bao) -> None:
    small = Transit(root, batch_size=100, concurrency=3)
    cts = await small.encrypt_many(key, [b"z"] * 1001)
    assert await audited(bao, f"transit/encrypt/{key}", 11) == 11
    # a batch_size above the server's limit (499 plain items) is capped, not refused
    huge = Transit(root, batch_size=5000)
    assert len(await huge.decrypt_many(key, cts)) == 1001
    assert await audited(bao, f"transit/decrypt/{key}", 3) == math.ceil(1001 / 449)


async def test_large_items_are_chunked_by_size(root: VaultClient, key: str, bao: Bao) -> None:
    t = Transit(root, max_chunk_bytes=1_000_000)
    values = [os.urandom(300_000) for _ in range(10)]  # ~400 KB each once base64-encoded
    cts = await t.encrypt_many(key, values)
    assert await t.decrypt_many(key, cts) == values
    assert await audited(bao, f"transit/encrypt/{key}", 5) == 5  # two items per request


# ---------------------------------------------------------------------------- rotation
async def test_rotate_and_rewrap(transit: Transit, key: str) -> None:
    values = [f"r{i}" for i in range(300)]
    old = await transit.encrypt_many(key, values)
    single_old = await transit.encrypt(key, "single")
    assert await transit.rotate_key(key) == 2
    versions = await transit.key_versions(key)
    assert versions == KeyVersions(latest=2, min_decryption=1, min_encryption=0, available=(1, 2))

    new = await transit.rewrap_many(key, old)
    assert all(c.startswith("vault:v2:") for c in new)
    assert await transit.decrypt_many(key, new) == [v.encode() for v in values]
    single_new = await transit.rewrap(key, single_old)
    assert single_new.startswith("vault:v2:")
    assert await transit.decrypt(key, single_new) == b"single"
    assert (await transit.encrypt(key, "fresh")).startswith("vault:v2:")


async def test_rewrap_derived(transit: Transit, derived_key: str) -> None:
    ct = await transit.encrypt(derived_key, "d", context="ctx")
    await transit.rotate_key(derived_key)
    new = await transit.rewrap(derived_key, ct, context="ctx")
    assert new.startswith("vault:v2:")
    assert await transit.decrypt(derived_key, new, context="ctx") == b"d"
    many = await transit.rewrap_many(derived_key, [ct, ct], context=["ctx", "ctx"])
    assert await transit.decrypt_many(derived_key, many, context="ctx") == [b"d", b"d"]


async def test_min_decryption_version(transit: Transit, key: str) -> None:
    old = await transit.encrypt(key, CANARY)
    old_many = await transit.encrypt_many(key, [CANARY] * 3)
    await transit.rotate_key(key)
    new = await transit.encrypt(key, "new")
    await transit.set_min_decryption_version(key, 2)
    assert (await transit.key_versions(key)).min_decryption == 2

    with pytest.raises(CiphertextVersionTooOld) as single:
        await transit.decrypt(key, old)
    e = single.value
    assert isinstance(e, VaultRequestError)
    assert (e.ciphertext_version, e.min_decryption_version) == (1, 2)
    assert "key version 1" in str(e) and "min_decryption_version 2" in str(e)
    assert_no_canary(e)

    # one old item in a batch: 200 with a per-item error
    with pytest.raises(CiphertextVersionTooOld) as mixed:
        await transit.decrypt_many(key, [new, old, new])
    assert mixed.value.index == 1 and mixed.value.ciphertext_version == 1
    # every item old: the server answers 400 without a top-level reason
    with pytest.raises(CiphertextVersionTooOld) as every:
        await transit.decrypt_many(key, old_many)
    assert every.value.index == 0 and every.value.failed == 3
    assert "3 of 3 items failed" in str(every.value)
    assert_no_canary(every.value)
    # rewrap cannot read it either
    with pytest.raises(CiphertextVersionTooOld):
        await transit.rewrap(key, old)
    with pytest.raises(CiphertextVersionTooOld) as rw:
        await transit.rewrap_many(key, [new, old])
    assert rw.value.index == 1
    # lowering the bound makes it readable again
    await transit.set_min_decryption_version(key, 1)
    assert await transit.decrypt(key, old) == CANARY.encode()


# ---------------------------------------------------------------------------- the real CLI
def _bao_cli(bao: Bao, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["BAO_ADDR"] = bao.addr
    env["BAO_TOKEN"] = bao.token  # the token in the environment, never argv
    out = subprocess.run(
        [bao_binary(), *args], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.strip()


async def test_ciphertext_of_the_bao_cli_decrypts(transit: Transit, key: str, bao: Bao) -> None:
    value = "made by the bao CLI ✓".encode()
    b64 = base64.b64encode(value).decode()
    ct = await asyncio.to_thread(
        _bao_cli, bao, "write", "-field=ciphertext", f"transit/encrypt/{key}", f"plaintext={b64}"
    )
    assert ct.startswith("vault:v1:")
    assert await transit.decrypt(key, ct) == value
    assert await transit.decrypt_many(key, [ct, ct]) == [value, value]
    # and the other way round: the CLI reads what Transit wrote
    ours = await transit.encrypt(key, value)
    back = await asyncio.to_thread(
        _bao_cli, bao, "write", "-field=plaintext", f"transit/decrypt/{key}", f"ciphertext={ours}"
    )
    assert base64.b64decode(back) == value


# ---------------------------------------------------------------------------- typed errors
async def test_missing_key(transit: Transit) -> None:
    missing = name("missing")
    with pytest.raises(TransitKeyNotFound) as dec:
        await transit.decrypt(missing, "vault:v1:AAAA")
    assert isinstance(dec.value, SecretNotFound) and isinstance(dec.value, KeyError)
    assert missing in str(dec.value)
    with pytest.raises(TransitKeyNotFound):
        await transit.decrypt_many(missing, ["vault:v1:AAAA"] * 300)
    with pytest.raises(TransitKeyNotFound):
        await transit.rewrap(missing, "vault:v1:AAAA")
    with pytest.raises(TransitKeyNotFound):
        await transit.read_key(missing)
    with pytest.raises(TransitKeyNotFound):
        await transit.key_versions(missing)
    with pytest.raises(TransitKeyNotFound):
        await transit.rotate_key(missing)
    with pytest.raises(TransitKeyNotFound):
        await transit.set_min_decryption_version(missing, 1)


async def test_encrypt_missing_key_with_upsert_disabled(root: VaultClient, own_mount: str) -> None:
    t = Transit(root, mount=own_mount)
    assert await t.upsert_disabled() is False
    await t.disable_upsert()
    assert await t.upsert_disabled() is True
    missing = name("missing")
    with pytest.raises(TransitKeyNotFound) as single:
        await t.encrypt(missing, CANARY)
    assert "upsert is disabled" in str(single.value)
    assert_no_canary(single.value)
    with pytest.raises(TransitKeyNotFound) as many:
        await t.encrypt_many(missing, [CANARY] * 1000)
    assert_no_canary(many.value)
    with pytest.raises(TransitKeyNotFound):  # and no key was created on the way
        await t.read_key(missing)


async def test_encrypt_missing_key_with_upsert_enabled_creates_it(
    root: VaultClient, own_mount: str
) -> None:
    """Vault's default, documented: encrypt creates a missing aes256-gcm96 key."""
    t = Transit(root, mount=own_mount)
    k = name("upserted")
    ct = await t.encrypt(k, "x")
    assert (await t.read_key(k))["type"] == "aes256-gcm96"
    assert await t.decrypt(k, ct) == b"x"


@pytest.mark.parametrize(
    "ciphertext",
    [
        "garbage",
        "",
        "vault:v1:notbase64",
        "vault:vx:AAAA",
        "vault:v1:" + base64.b64encode(b"abc").decode(),  # too short
        "bao:v1:" + base64.b64encode(os.urandom(40)).decode(),
    ],
    ids=["garbage", "empty", "not-base64", "bad-version", "short", "wrong-prefix"],
)
async def test_malformed_ciphertext(transit: Transit, key: str, ciphertext: str) -> None:
    with pytest.raises(InvalidCiphertext) as single:
        await transit.decrypt(key, ciphertext)
    assert single.value.index is None and single.value.status == 400
    good = await transit.encrypt(key, "ok")
    with pytest.raises(InvalidCiphertext) as batch:
        await transit.decrypt_many(key, [good, good, ciphertext, good])
    assert batch.value.index == 2 and "item 2 of 4" in str(batch.value)


async def test_too_new_and_forged_ciphertext(transit: Transit, key: str) -> None:
    ct = await transit.encrypt(key, CANARY)
    with pytest.raises(InvalidCiphertext) as too_new:
        await transit.decrypt(key, ct.replace("vault:v1:", "vault:v99:"))
    assert "key version 99" in str(too_new.value) and "newer" in str(too_new.value)
    assert not isinstance(too_new.value, DecryptionFailed)

    forged = "vault:v1:" + base64.b64encode(os.urandom(48)).decode()
    with pytest.raises(DecryptionFailed) as bad:
        await transit.decrypt(key, forged)
    assert "did not authenticate" in str(bad.value) and "context" not in str(bad.value)
    other = name()
    await transit.create_key(other)
    with pytest.raises(DecryptionFailed):  # another key's ciphertext
        await transit.decrypt(other, ct)
    assert_no_canary(bad.value)


async def test_batch_failures_name_the_lowest_index(transit: Transit, key: str) -> None:
    cts = await transit.encrypt_many(key, [CANARY] * 1200)
    cts[1100] = "garbage"
    cts[700] = "vault:v1:notbase64"
    with pytest.raises(InvalidCiphertext) as err:
        await transit.decrypt_many(key, cts)
    assert err.value.index == 700 and err.value.failed >= 1
    assert isinstance(err.value, TransitError)
    assert_no_canary(err.value)


async def test_canary_never_in_errors(transit: Transit, key: str, derived_key: str) -> None:
    raised: list[VaultError] = []
    ct = await transit.encrypt(derived_key, CANARY, context=CANARY_CTX)
    attempts = [
        transit.decrypt(derived_key, ct, context=CANARY_CTX + "x"),
        transit.decrypt(derived_key, ct),
        transit.encrypt(derived_key, CANARY),
        transit.decrypt_many(derived_key, [ct, ct], context=[CANARY_CTX, CANARY]),
        transit.encrypt_many(derived_key, [CANARY] * 2, context=[CANARY_CTX, ""]),
        transit.decrypt(key, ct, context=CANARY_CTX),
        transit.decrypt(name("missing"), ct, context=CANARY_CTX),
        transit.encrypt_many(key, [CANARY] * 10, context=[CANARY_CTX] * 10),
    ]
    for coro in attempts:
        try:
            await coro
        except VaultError as exc:
            raised.append(exc)
    assert len(raised) >= 6
    for err in raised:
        assert_no_canary(err)


async def test_bad_arguments_fail_before_any_request(
    root: VaultClient, transit: Transit, key: str
) -> None:
    with pytest.raises(TypeError, match="item 1"):
        await transit.encrypt_many(key, ["a", 3, "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        await transit.decrypt_many(key, [b"vault:v1:AAAA"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="surrogate") as surrogate:
        await transit.encrypt(key, CANARY + "\ud800")
    assert_no_canary(surrogate.value)
    with pytest.raises(InvalidPath):
        await transit.encrypt("bad/key", "x")
    with pytest.raises(InvalidPath):
        await transit.encrypt("", "x")
    with pytest.raises(TypeError):
        await transit.encrypt_many(key, ["x"], context=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Transit(root, batch_size=0)


async def test_create_key_is_idempotent_and_checks_type(transit: Transit) -> None:
    k = name()
    info = await transit.create_key(k, derived=True)
    assert info["derived"] is True and info["type"] == "aes256-gcm96"
    again = await transit.create_key(k, derived=True)
    assert again["latest_version"] == 1
    with pytest.raises(TransitError, match="already exists"):
        await transit.create_key(k, type="chacha20-poly1305", derived=True)
    with pytest.raises(TransitError, match="already exists"):
        await transit.create_key(k)
    cha = name()
    await transit.create_key(cha, type="chacha20-poly1305")
    assert await transit.decrypt(cha, await transit.encrypt(cha, "c")) == b"c"


async def test_missing_mount(root: VaultClient) -> None:
    t = Transit(root, mount=name("nomount"))
    with pytest.raises(SecretNotFound, match="no transit engine is mounted") as err:
        await t.encrypt("k", CANARY)
    assert not isinstance(err.value, TransitKeyNotFound)
    with pytest.raises(SecretNotFound, match="no transit engine is mounted"):
        await t.decrypt_many("k", ["vault:v1:AAAA"] * 3)
    with pytest.raises(SecretNotFound, match="no transit engine is mounted"):
        await t.read_key("k")
