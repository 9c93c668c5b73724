"""What a process that only reads secrets loads: nothing a read does not use.

Each check runs a fresh interpreter against the session's dev server, imports the service
the way an app does and reads the guide's three secrets, then lists ``sys.modules``.
PyJWT and cryptography (8.8 MiB of resident memory together), the lease container, the
listeners, the snapshot, prometheus_client, the CLI's typer/rich and the rotation targets'
drivers load only when a feature that needs them is first used (bench/bench_memory.py
measures the memory). The children print module and key names only, never a value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from .conftest import Bao

ROOT = Path(__file__).resolve().parents[1]

#: loaded by a read: if these are missing, the listing below is not seeing imports at all
NEEDED = ("aiohttp", "pydantic_settings", "maily_secrets.service")

#: not used by a read
NOT_NEEDED = (
    "jwt",
    "cryptography",
    "prometheus_client",
    "yaml",
    "psycopg",
    "redis",
    "boto3",
    "botocore",
    "rich",
    "typer",
    "maily_secrets.jwt_keys",
    "maily_secrets.jwt_keyset",
    "maily_secrets.leases",
    "maily_secrets.listeners",
    "maily_secrets.snapshot",
    "maily_secrets.filesource",
    "maily_secrets.metrics",
    "maily_secrets.typed",
    "maily_secrets.rotation",
    "maily_secrets.targets",
    "maily_secrets.cli",
    "maily_secrets.dev",
    "maily_secrets.vault.transit",
)

_LOADED = textwrap.dedent(
    """
    import json, sys

    def loaded(names):
        return [n for n in names if n in sys.modules]
    """
)


def run_child(bao: Bao, code: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,  # in the environment, never in the arguments
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    out = subprocess.run(
        [sys.executable, "-c", _LOADED + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert bao.token not in out.stdout + out.stderr
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


def names_arg() -> str:
    return repr({"needed": NEEDED, "not_needed": NOT_NEEDED})


def test_guide_import_and_three_reads_load_no_jwt_cryptography_leases_or_cli(
    bao: Bao,
) -> None:
    doc = run_child(
        bao,
        f"""
        import asyncio
        from apps.api.services.vault_service import vault_service

        names = {names_arg()}

        async def main():
            config = await vault_service.get_config()
            aws = await vault_service.get_credentials("aws")
            keys = await vault_service.get_api_keys()
            after_reads = {{
                "read": [sorted(config), sorted(aws), sorted(keys)],
                "needed": loaded(names["needed"]),
                "not_needed": loaded(names["not_needed"]),
            }}
            # a feature that needs PyJWT still gets it, on first use
            await vault_service.get_jwt_signing_key()
            after_reads["after_jwt"] = loaded(["jwt", "maily_secrets.jwt_keys"])
            await vault_service.close()
            return after_reads

        print(json.dumps(asyncio.run(main())))
        """,
    )
    config, aws, keys = doc["read"]
    assert "db_host" in config and "aws_access_key" in aws and "stripe" in keys
    assert doc["needed"] == list(NEEDED)
    assert doc["not_needed"] == []
    assert doc["after_jwt"] == ["jwt", "maily_secrets.jwt_keys"]


def test_sync_api_three_reads_load_no_jwt_cryptography_leases_or_cli(bao: Bao) -> None:
    doc = run_child(
        bao,
        f"""
        from maily_secrets.sync import vault_service

        names = {names_arg()}
        try:
            config = vault_service.get_config()
            aws = vault_service.get_credentials("aws")
            keys = vault_service.get_api_keys()
            print(json.dumps({{
                "read": [sorted(config), sorted(aws), sorted(keys)],
                "needed": loaded(names["needed"]),
                "not_needed": loaded(names["not_needed"]),
            }}))
        finally:
            vault_service.close()
        """,
    )
    config, aws, keys = doc["read"]
    assert "db_host" in config and "aws_access_key" in aws and "stripe" in keys
    assert doc["needed"] == list(NEEDED)
    assert doc["not_needed"] == []


def test_every_public_name_imports_and_errors_alone_load_no_pydantic(bao: Bao) -> None:
    doc = run_child(
        bao,
        """
        import maily_secrets.errors
        bare = loaded(["pydantic", "aiohttp", "maily_secrets.settings"])
        import maily_secrets
        got = {n: type(getattr(maily_secrets, n)).__name__ for n in maily_secrets.__all__}
        from maily_secrets import *  # noqa: F403 - every name of __all__ resolves
        print(json.dumps({"bare": bare, "got": got, "dir": sorted(dir(maily_secrets))}))
        """,
    )
    assert doc["bare"] == []
    got = doc["got"]
    assert got["VaultService"] == "type" and got["VaultSettings"] == "ModelMetaclass"
    assert got["vault_service"] == "VaultService"
    assert got["SecretNotFound"] == "type" and got["__version__"] == "str"
    assert set(got) <= set(doc["dir"])
