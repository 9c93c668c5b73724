"""The guide's "Basic Usage" snippet, run verbatim against a real OpenBao."""

from __future__ import annotations

import os
import subprocess
import sys
from types import FrameType
from typing import Any

from .guide import ROOT, code_blocks
from .secrecy import assert_same


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
    assert_same(got["access_key"], creds["aws"]["aws_access_key"], "access_key")
    assert_same(got["stripe_key"], keys["stripe"], "stripe_key")
    assert_same(got["config"], config, "config")
    assert_same(got["aws_creds"], creds["aws"], "aws_creds")


def test_import_does_no_io_and_starts_no_task() -> None:
    """Importing outside any event loop, with Vault unreachable, is harmless (the earlier bug)."""
    code = (
        "import threading, socket\n"
        "socket.socket.connect = None  # any connection attempt would raise\n"
        "from apps.api.services.vault_service import vault_service\n"
        "import maily_secrets\n"
        "assert vault_service is maily_secrets.vault_service\n"
        "assert vault_service._client is None and vault_service._cache is None\n"
        "assert threading.active_count() == 1\n"
        "print('ok')\n"
    )
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this checkout's package
    env = {**os.environ, "VAULT_ADDR": "http://127.0.0.1:1", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
