"""The guide's "Basic Usage" snippet, run verbatim against a real OpenBao."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest

from apps.api.services.vault_service import vault_service

from .conftest import Bao
from .guide import code_blocks


@pytest.fixture
async def guide_env(bao: Bao, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The environment a Maily service gets: VAULT_ADDR and VAULT_TOKEN."""
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    await vault_service.close()
    yield
    await vault_service.close()


async def _run_capturing_locals(fn: Any) -> dict[str, Any]:
    """Await ``fn()`` and return its local variables at the moment it returned."""
    captured: dict[str, Any] = {}
    code = fn.__code__

    def prof(frame: FrameType, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is code:
            captured.update(frame.f_locals)

    old = sys.getprofile()
    sys.setprofile(prof)
    try:
        await fn()
    finally:
        sys.setprofile(old)
    return captured


async def test_basic_usage_verbatim(guide_env: Any, root: Any) -> None:
    (snippet,) = code_blocks("Basic Usage", "python")
    assert "from apps.api.services.vault_service import vault_service" in snippet
    namespace: dict[str, Any] = {"__name__": "guide_basic_usage"}
    exec(compile(snippet, "guide:Basic Usage", "exec"), namespace)  # noqa: S102 - the guide's code
    got = await _run_capturing_locals(namespace["my_function"])

    config = (await root.kv.read("maily/data/config")).data
    creds = (await root.kv.read("maily/data/credentials")).data
    keys = (await root.kv.read("maily/data/api-keys")).data
    assert got["db_host"] == config["db_host"]
    assert got["access_key"] == creds["aws"]["aws_access_key"]
    assert got["stripe_key"] == keys["stripe"]
    assert got["config"] == config
    assert got["aws_creds"] == creds["aws"]


async def test_import_does_no_io_and_starts_no_task() -> None:
    """Importing and constructing outside a loop is harmless (the earlier bug)."""
    import importlib

    import apps.api.services.vault_service as mod

    mod = importlib.reload(mod)
    svc = mod.vault_service
    assert svc._client is None and svc._cache is None
