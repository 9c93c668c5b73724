"""Memory of a process that uses the library: import the service and read three secrets.

Each variant is a fresh interpreter (``ctx.python``, ``ctx.env()``) that does what an app
does at start and reports the peak resident set (``VmHWM`` of ``/proc/self/status``):

- ``ours``: ``from apps.api.services.vault_service import vault_service`` (the guide's
  import), then ``get_config()``, ``get_credentials("aws")`` and ``get_api_keys()``;
- ``hvac``: ``import hvac``, a ``Client`` and three ``kv.v2.read_secret_version`` calls
  of the same three secrets;
- ``aiohttp`` and ``aiohttp+pydantic-settings`` (references, no goal): three GETs of the
  same secrets from a bare ``aiohttp.ClientSession``, without and with building a one-field
  ``pydantic_settings.BaseSettings`` first: the floor of our two runtime dependencies.

The secrets are the guide's three (``<mount>/data/config``, ``api-keys``, ``credentials``),
created on ``ctx.addr`` when missing (create-only, check-and-set 0), never overwritten.
Goal: ours / hvac <= 1.25 (medians of interleaved rounds). No value or token is printed:
a child reports only sizes and module names.

    bench/.venv/bin/python bench/run.py --only memory [--rounds 9] [--root DIR]
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_context import Context, interleave

KEY = "memory"
GOAL_VS_HVAC = 1.25
MOUNT = "maily"
NAMES = ("config", "credentials", "api-keys")
# what a read does not need; the children report which of these they loaded
HEAVY = (
    "pydantic",
    "pydantic_settings",
    "aiohttp",
    "requests",
    "yaml",
    "cryptography",
    "jwt",
    "prometheus_client",
    "psycopg",
    "redis",
    "boto3",
    "botocore",
    "rich",
    "typer",
)

_REPORT = textwrap.dedent(
    f"""
    def _report():
        import json, sys
        with open("/proc/self/status") as f:
            st = dict(line.split(":", 1) for line in f if ":" in line)
        kib = lambda k: int(st[k].split()[0])
        heavy = {HEAVY!r}
        print(json.dumps({{
            "hwm_kib": kib("VmHWM"), "rss_kib": kib("VmRSS"),
            "anon_kib": kib("RssAnon"), "file_kib": kib("RssFile"),
            "modules": len(sys.modules),
            "heavy": [m for m in heavy if m in sys.modules],
        }}))
    """
)

CHILDREN = {
    "ours": _REPORT
    + textwrap.dedent(
        """
        import asyncio, sys
        from apps.api.services.vault_service import vault_service

        async def main():
            await vault_service.get_config()
            await vault_service.get_credentials(sys.argv[1])
            await vault_service.get_api_keys()
            await vault_service.close()

        asyncio.run(main())
        _report()
        """
    ),
    "hvac": _REPORT
    + textwrap.dedent(
        f"""
        import os
        import hvac

        client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
        for name in {NAMES!r}:
            client.secrets.kv.v2.read_secret_version(
                path=name, mount_point={MOUNT!r}, raise_on_deleted_version=True
            )
        client.adapter.close()
        _report()
        """
    ),
    "aiohttp": _REPORT
    + textwrap.dedent(
        f"""
        import asyncio, os, sys
        import aiohttp

        if sys.argv[1] == "settings":
            import pydantic_settings

            class Settings(pydantic_settings.BaseSettings):
                model_config = pydantic_settings.SettingsConfigDict(env_prefix="VAULT_")
                addr: str = ""

            Settings()

        async def main():
            headers = {{"X-Vault-Token": os.environ["VAULT_TOKEN"]}}
            async with aiohttp.ClientSession() as session:
                for name in {NAMES!r}:
                    url = f"{{os.environ['VAULT_ADDR']}}/v1/{MOUNT}/data/{{name}}"
                    async with session.get(url, headers=headers) as r:
                        r.raise_for_status()
                        await r.json()

        asyncio.run(main())
        _report()
        """
    ),
}


def _sample(value: int) -> dict[str, Any]:
    return {"value": secrets.token_urlsafe(24), "n": value}


def seed(ctx: Context) -> str:
    """Create the three secrets when missing (create-only); the service name whose
    credentials the ``ours`` child reads (``aws`` unless the secret lacks it)."""
    # the measured checkout's public API only: it runs against the old code too
    from pydantic import SecretStr

    from maily_secrets.errors import CheckAndSetConflict
    from maily_secrets.service import VaultService
    from maily_secrets.settings import VaultSettings

    settings = VaultSettings(
        addr=ctx.addr, token=SecretStr(ctx.token), auth_method="token", snapshot_path=None
    )
    samples: dict[str, dict[str, Any]] = {
        "config": _sample(1),
        "api-keys": _sample(2),
        "credentials": {"aws": _sample(3)},
    }

    async def run() -> str:
        async with VaultService(settings) as svc:
            for name, data in samples.items():
                try:
                    await svc.put_secret(f"{MOUNT}/data/{name}", data, cas=0)
                except CheckAndSetConflict:
                    pass  # it exists: read what is there, never overwrite
            creds = await svc.get_secret(f"{MOUNT}/data/credentials")
            for k in ("aws", *sorted(creds)):
                if isinstance(creds.get(k), dict):
                    return k
            raise RuntimeError(f"{MOUNT}/data/credentials holds no service's credentials")

    return ctx.runner.run(run())


def _child(ctx: Context, script: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [ctx.python, str(script), *args],
        env=ctx.env(),
        cwd=ctx.scratch,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        # the last line only: a traceback of ours never holds a value (and no token)
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{script.name} exited {proc.returncode}: {last[:200]}")
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


def figures(ctx: Context) -> list[dict[str, Any]]:
    service = seed(ctx)
    scripts: dict[str, Path] = {}
    for name, text in CHILDREN.items():
        scripts[name] = ctx.scratch / f"memory_{name}.py"
        scripts[name].write_text(text)
    runs: dict[str, tuple[Path, tuple[str, ...]]] = {
        "ours": (scripts["ours"], (service,)),
        "hvac": (scripts["hvac"], ()),
        "aiohttp": (scripts["aiohttp"], ("bare",)),
        "aiohttp_settings": (scripts["aiohttp"], ("settings",)),
    }
    reports: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}

    def variant(key: str) -> Callable[[], float]:
        script, args = runs[key]

        def run() -> float:
            doc = _child(ctx, script, *args)
            reports[key].append(doc)
            return float(doc["hwm_kib"]) / 1024

        return run

    rounds = interleave(
        ctx.rounds, {k: variant(k) for k in runs}, log=ctx.log, title="memory (VmHWM MiB)"
    )

    def median_of(key: str, field: str) -> float:
        return round(statistics.median(float(r[field]) for r in reports[key]) / 1024, 2)

    labels = {
        "ours": f"vault_service: get_config, get_credentials({service!r}), get_api_keys",
        "hvac": "hvac: 3 x kv.v2.read_secret_version",
        "aiohttp": "bare aiohttp: 3 GETs (reference)",
        "aiohttp_settings": "bare aiohttp + a pydantic-settings model: 3 GETs (reference)",
    }
    return [
        {
            "key": KEY,
            "title": "Memory: import + three reads (peak RSS)",
            "description": (
                "Peak resident set (VmHWM) of a fresh process that imports the service"
                " and reads the guide's three secrets, versus hvac reading the same three;"
                " bare aiohttp with and without pydantic-settings are the floor of our"
                " runtime dependencies."
            ),
            "unit": "MiB",
            "better": "lower",
            "variants": {
                k: {"label": labels[k], "rounds": [round(v, 2) for v in rounds[k]]} for k in runs
            },
            "goals": [
                {
                    "label": "ours / hvac",
                    "num": "ours",
                    "den": "hvac",
                    "op": "<=",
                    "value": GOAL_VS_HVAC,
                }
            ],
            "notes": {
                "measure": "VmHWM of /proc/self/status after the reads, one process per value",
                "vmrss_mib_median": {k: median_of(k, "rss_kib") for k in runs},
                "rss_anon_mib_median": {k: median_of(k, "anon_kib") for k in runs},
                "rss_file_mib_median": {k: median_of(k, "file_kib") for k in runs},
                "modules_loaded": {k: reports[k][-1]["modules"] for k in runs if reports[k]},
                "heavy_loaded": {k: reports[k][-1]["heavy"] for k in runs if reports[k]},
            },
        }
    ]
