"""The guide's "Using Encryption Service" snippet, verbatim, and the facade's type round trips."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from maily_secrets.errors import DecryptedNotText, TransitKeyNotFound
from maily_secrets.service import VaultService

from .conftest import Bao
from .guide import code_blocks


async def test_encryption_snippet_verbatim(guide_env: Any, bao: Bao) -> None:
    (snippet,) = code_blocks("Using Encryption Service", "python")
    ns: dict[str, Any] = {"__name__": "guide_encryption"}
    exec(compile(snippet, "guide:Using Encryption Service", "exec"), ns)  # noqa: S102
    plaintext = "card ending 4242 / " + uuid.uuid4().hex
    encrypted = await ns["encrypt_sensitive_data"](plaintext)
    assert encrypted.startswith("vault:v") and plaintext not in encrypted
    assert await ns["decrypt_sensitive_data"](encrypted) == plaintext
    # it really went through Vault's transit engine with the guide's key
    assert bao.audit_requests("transit/encrypt/maily-enc-key") >= 1


async def test_str_and_bytes_round_trips(bao: Bao) -> None:
    svc = VaultService(bao.settings())
    try:
        ct = await svc.encrypt_data("maily-enc-key", "héllo")
        assert await svc.decrypt_data("maily-enc-key", ct) == "héllo"
        assert await svc.decrypt_data("maily-enc-key", ct, as_bytes=True) == "héllo".encode()

        blob = os.urandom(64) + b"\xff\xfe"
        ct = await svc.encrypt_data("maily-enc-key", blob)
        assert await svc.decrypt_data("maily-enc-key", ct, as_bytes=True) == blob
        with pytest.raises(DecryptedNotText, match="as_bytes=True"):
            await svc.decrypt_data("maily-enc-key", ct)

        items = [f"row-{i}" for i in range(1200)]
        cts = await svc.encrypt_many("maily-enc-key", items)
        assert [b.decode() for b in await svc.decrypt_many("maily-enc-key", cts)] == items
    finally:
        await svc.close()


async def test_unknown_key_is_a_clear_error(bao: Bao) -> None:
    svc = VaultService(bao.settings())
    try:
        with pytest.raises(TransitKeyNotFound, match="no-such-key"):
            await svc.decrypt_data("no-such-key", "vault:v1:AAAA")
    finally:
        await svc.close()
