"""CLI start: `mailyctl` as an operator runs it, a new process every time.

    bench/.venv/bin/python bench/run.py --only cli [--quick] [--root DIR]

Four figures, each a wall time of ``ctx.root / "mailyctl.py"`` executed as a program (its
shebang, as ``./mailyctl.py`` in a shell), against its peer where the goal has one:

- ``cli_help``: ``mailyctl.py --help`` vs the real ``bao version`` (Go);
- ``cli_status``: ``secrets status`` (the default rotation config, seven types) vs
  ``bao kv get`` of one secret;
- ``cli_status_1000``: ``secrets status`` of a config that tracks 1,000 secrets;
- ``cli_rotate``: ``secrets rotate --secret-types=database,jwt --force`` (no grace waits):
  the database type against the machine's PostgreSQL (127.0.0.1:5432, as ``make test``
  starts it) with two login roles of this run's own, flipped by every rotation.

Everything lives in a KV v2 mount of this run's own on ``ctx.addr`` (removed afterwards),
the PostgreSQL roles are named ``cli_bench_<hex>_*`` and dropped afterwards. Only what the
old code has too is used (the CLI, ``maily_secrets.bootstrap``), so ``--root`` may name an
older checkout. No output of a command is kept (``bao kv get`` prints values).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

try:
    from bench_context import Context, interleave
except ImportError:  # imported as bench.bench_cli
    from .bench_context import Context, interleave

TRACKED = 1000


class _Run:
    """Subprocess timing for one checkout and server."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.mailyctl = str(ctx.root / "mailyctl.py")

    def timed(
        self, argv: list[str], env: dict[str, str], check_json: Callable[[Any], bool] | None = None
    ) -> float:
        t0 = time.perf_counter()
        p = subprocess.run(
            argv,
            stdout=subprocess.PIPE if check_json else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=300,
        )
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            # stderr of our CLI never holds a value; bao's is cut and only its length kept
            tail = p.stderr.decode(errors="replace")[-300:] if argv[0] == self.mailyctl else ""
            raise RuntimeError(f"{Path(argv[0]).name} {argv[1]} exited {p.returncode}: {tail}")
        if check_json is not None and not check_json(json.loads(p.stdout or b"{}")):
            raise RuntimeError(f"{Path(argv[0]).name} {' '.join(argv[1:3])}: unexpected output")
        return dt


async def _setup(ctx: Context, mount: str, suffix: str) -> dict[str, Any]:
    from maily_secrets.bootstrap import (
        BootstrapReport,
        ensure_database_rotation,
        ensure_engines,
        prepare_postgres,
    )
    from maily_secrets.dev.bootstrap import dev_postgres_target
    from maily_secrets.paths import KV2Path
    from maily_secrets.settings import VaultSettings
    from maily_secrets.vault.client import VaultClient

    roles = (f"cli_bench_{suffix}_a", f"cli_bench_{suffix}_b")
    group = f"cli_bench_{suffix}_grp"
    target = dev_postgres_target()
    why = prepare_postgres(target)
    if why:
        raise RuntimeError(f"PostgreSQL not usable ({why}); run `make services` first")
    settings = VaultSettings(addr=ctx.addr, token=ctx.token, auth_method="token")
    async with VaultClient(settings) as c:
        report = BootstrapReport()
        await ensure_engines(c, report, kv_mount=mount, transit_mount="transit", samples=True)
        await c.kv.update(KV2Path(mount, "config"), lambda d: {**d, "db_username": roles[0]})
        await ensure_database_rotation(c, target, report, kv_mount=mount, roles=roles, group=group)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                value = {"jwt_secret": secrets.token_hex(20)}
                await c.kv.write(f"{mount}/data/svc/key-{i:04d}", value, cas=0)

        await asyncio.gather(*(one(i) for i in range(TRACKED)))
    return {"target": target, "roles": [*roles, group]}


async def _teardown(ctx: Context, mount: str, target: Any, roles: list[str]) -> None:
    from maily_secrets.dev.bootstrap import drop_postgres_roles
    from maily_secrets.settings import VaultSettings
    from maily_secrets.vault.client import VaultClient

    try:
        if target is not None:
            await drop_postgres_roles(target, roles)
    finally:
        settings = VaultSettings(addr=ctx.addr, token=ctx.token, auth_method="token")
        async with VaultClient(settings) as c:
            await c.delete(f"sys/mounts/{mount}")


def _configs(ctx: Context, mount: str, roles: list[str]) -> tuple[Path, Path]:
    default = ctx.root / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
    doc = yaml.safe_load(default.read_text())
    for e in doc["environments"].values():
        e["vault"] = {"kv_mount": mount, "auth_method": "token"}  # VAULT_ADDR/TOKEN: ctx.env()
    doc["types"]["database"]["options"].update(login_roles=roles[:2], group=roles[2])
    # There is no AWS here: with the key rotating itself ("self"), the aws row of a status
    # asks IAM when the key in Vault was made (boto3, retries into an unreachable endpoint);
    # "default" credentials date it by the secret, as every other row, from Vault alone.
    doc["types"]["aws"].setdefault("options", {})["iam_credentials"] = "default"
    rotate_cfg = ctx.scratch / "cli-rotation.yaml"
    rotate_cfg.write_text(yaml.safe_dump(doc))
    many = dict(doc)
    many["types"] = {
        f"svc_key_{i:04d}": {"secret": f"svc/key-{i:04d}", "rotator": "jwt"} for i in range(TRACKED)
    }
    many["defaults"] = {
        "environment": "development",
        "intervals": dict.fromkeys(many["types"], "90d"),
    }
    status_cfg = ctx.scratch / "cli-status-1000.yaml"
    status_cfg.write_text(yaml.safe_dump(many))
    return rotate_cfg, status_cfg


def _env(ctx: Context, **extra: str) -> dict[str, str]:
    """``ctx.env()`` with bytecode caching on: an installed package has its .pyc files, a
    checkout writes them on its first run (the warm-up), so no round compiles the package
    from source (PYTHONDONTWRITEBYTECODE=1 in a caller's environment would make every
    round do that: 0.4-0.7 s for the old CLI here)."""
    env = ctx.env(**extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _figure(
    key: str,
    title: str,
    description: str,
    unit: str,
    variants: dict[str, tuple[str, list[float]]],
    goals: list[dict[str, Any]],
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "key": key,
        "title": title,
        "description": description,
        "unit": unit,
        "better": "lower",
        "variants": {
            k: {"label": label, "rounds": rounds} for k, (label, rounds) in variants.items()
        },
        "goals": goals,
        "notes": notes or {},
    }


def figures(ctx: Context) -> list[dict[str, Any]]:
    run = _Run(ctx)
    hexid = secrets.token_hex(4)
    mount = f"cli-bench-{hexid}"
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    ms = 1000.0
    cheap_rounds = ctx.rounds * (2 if ctx.quick else 3)  # a fresh process costs ~0.1 s
    out: list[dict[str, Any]] = []

    # --help needs no server
    base_env = _env(ctx)
    help_runs = {
        "ours": lambda: ms * run.timed([run.mailyctl, "--help"], base_env),
        "bao": lambda: ms * run.timed([ctx.bao, "version"], base_env),
    }
    for fn in help_runs.values():
        fn()  # warm-up: page cache, bytecode
    r = interleave(cheap_rounds, help_runs, ctx.log, "cli --help")
    out.append(
        _figure(
            "cli_help",
            "CLI start: --help",
            "./mailyctl.py --help as a new process (its shebang) vs the OpenBao binary's"
            " `bao version`",
            "ms",
            {"ours": ("mailyctl --help", r["ours"]), "bao": ("bao version", r["bao"])},
            [{"label": "ours / bao", "num": "ours", "den": "bao", "op": "<=", "value": 1.5}],
        )
    )

    target: Any = None
    made = {"roles": [f"cli_bench_{hexid}_a", f"cli_bench_{hexid}_b", f"cli_bench_{hexid}_grp"]}
    try:
        ctx.log(f"cli: setting up mount {mount} ({TRACKED} tracked secrets, PostgreSQL roles)")
        made = ctx.runner.run(_setup(ctx, mount, hexid))
        target = made["target"]
        rotate_cfg, status_cfg = _configs(ctx, mount, made["roles"])
        env7 = _env(ctx, MAILY_ROTATION_CONFIG=str(rotate_cfg))
        env1000 = _env(ctx, MAILY_ROTATION_CONFIG=str(status_cfg))

        def seven(doc: Any) -> bool:
            return len(doc.get("types", ())) == 7

        def thousand(doc: Any) -> bool:
            return len(doc.get("types", ())) == TRACKED

        def rotated(doc: Any) -> bool:
            got = {x["type"]: x["status"] for x in doc.get("results", ())}
            return got == {"database": "rotated", "jwt": "rotated"}

        status_runs = {
            "ours": lambda: (
                ms * run.timed([run.mailyctl, "secrets", "status", "--json"], env7, seven)
            ),
            "bao": lambda: (
                ms * run.timed([ctx.bao, "kv", "get", f"-mount={mount}", "config"], env7)
            ),
        }
        for fn in status_runs.values():
            fn()
        r = interleave(cheap_rounds, status_runs, ctx.log, "cli status")
        out.append(
            _figure(
                "cli_status",
                "CLI start: secrets status",
                "`secrets status --json` of the default rotation config (seven types) vs"
                " `bao kv get` of one secret, each a new process",
                "ms",
                {"ours": ("mailyctl secrets status", r["ours"]), "bao": ("bao kv get", r["bao"])},
                [{"label": "ours / bao", "num": "ours", "den": "bao", "op": "<=", "value": 3.0}],
            )
        )

        heavy_runs = {
            "status_1000": lambda: run.timed(
                [run.mailyctl, "secrets", "status", "--json"], env1000, thousand
            ),
            "rotate": lambda: run.timed(
                [
                    run.mailyctl,
                    "secrets",
                    "rotate",
                    "--secret-types=database,jwt",
                    "--force",
                    "--json",
                ],
                env7,
                rotated,
            ),
        }
        for fn in heavy_runs.values():
            fn()
        r = interleave(ctx.rounds, heavy_runs, ctx.log, "cli heavy")
        out.append(
            _figure(
                "cli_status_1000",
                "CLI: secrets status, 1,000 tracked",
                f"`secrets status --json` of a config tracking {TRACKED:,} secrets (jwt"
                " rotator, never rotated: one state read and one metadata read each), a new"
                " process",
                "s",
                {"ours": ("mailyctl secrets status x1000", r["status_1000"])},
                [{"label": "wall time", "variant": "ours", "op": "<=", "value": 1.0}],
            )
        )
        out.append(
            _figure(
                "cli_rotate",
                "CLI: secrets rotate database,jwt",
                "`secrets rotate --secret-types=database,jwt --force --json`, a new process:"
                " two-phase rotation of both types, the database one flipping between two"
                " PostgreSQL login roles of this run",
                "s",
                {"ours": ("mailyctl secrets rotate database,jwt", r["rotate"])},
                [{"label": "wall time", "variant": "ours", "op": "<=", "value": 1.0}],
            )
        )
    finally:
        ctx.runner.run(_teardown(ctx, mount, target, made["roles"]))
    return out
