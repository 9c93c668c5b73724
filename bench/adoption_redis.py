"""Redis: operations through ``adapters.redis_client`` while the ``redis`` type rotates and
retires (figures for ``bench_adoption``).

One round: an ACL user pair of this run's own (two alternating users), a consumer secret,
a client (``redis_client``, listener interval 1 s) and eight tasks sending SET/GET/INCR
without pause. Then ``mailyctl secrets rotate --secret-types redis`` runs as a subprocess;
the client follows (listener), drains the previous user's connections; the retirement
runs through an in-process ``RotationEngine`` whose clock is past the grace (the previous
user's passwords are removed); the load goes on for a short tail. The window measured is
from the start of ``mailyctl`` to the end of the tail: operations per second, and failed
operations (goal 0). The next round rotates again (``--force``: the previous user was
retired, so nobody is cut off). The ACL users and keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench_context import Context

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
WORKERS = 8
TAIL_S = 1.0  # load after the retirement, seconds
WARMUP_OPS = 200


class _Load:
    def __init__(self, client: Any, keys: str) -> None:
        from redis.exceptions import RedisError

        self.client, self.keys, self._errors = client, keys, (RedisError, OSError)
        self.ok = self.failed = 0
        self.error_kinds: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if n % 3 == 0:
                    await self.client.incr(f"{self.keys}:count")
                elif n % 3 == 1:
                    await self.client.set(f"{self.keys}:{i}", n)
                else:
                    await self.client.get(f"{self.keys}:{i}")
                self.ok += 1
            except self._errors as exc:
                self.failed += 1
                kind = type(exc).__name__
                self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
            await asyncio.sleep(0)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(WORKERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _until(done: Any, within: float) -> None:
    async with asyncio.timeout(within):
        while not done():  # noqa: ASYNC110 - the pool and the listener have no event
            await asyncio.sleep(0.01)


def _config(ctx: Context, secret: str, admin: str, users: tuple[str, str], prefix: str) -> Path:
    import yaml

    builtin = ctx.root / "src" / "maily_secrets" / "rotation" / "default_config.yaml"
    doc = yaml.safe_load(builtin.read_text())
    doc["types"]["redis"] = {
        "secret": secret,
        "grace": "1h",
        "options": {"acl_users": list(users), "admin_secret": admin},
    }
    doc["environments"]["development"]["state_prefix"] = prefix
    path = ctx.scratch / f"redis-adoption-{prefix}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _rounds(ctx: Context, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from pydantic import SecretStr

    from maily_secrets import adapters
    from maily_secrets.dev.adoption import retire_due
    from maily_secrets.paths import KV2Path
    from maily_secrets.service import VaultService
    from maily_secrets.settings import VaultSettings
    from maily_secrets.targets import random_password
    from maily_secrets.targets.redis import client_list, ensure_redis_acl_user
    from maily_secrets.vault.client import VaultClient

    hexid = uuid.uuid4().hex[:8]
    users = (f"maily_bench_{hexid}", f"maily_bench_{hexid}_b")
    secret, admin_secret, keys = (
        f"bench-redis-{hexid}",
        f"rotator/bench-redis-admin-{hexid}",
        f"maily:bench:{hexid}",
    )
    settings = VaultSettings(
        addr=ctx.addr, token=SecretStr(ctx.token), auth_method="token", snapshot_path=None
    )
    cfg_path = _config(ctx, secret, admin_secret, users, f"bench-redis-{hexid}")
    admin = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=10)
    out: dict[str, Any] = {"rate": [], "failed": [], "ops": [], "window_s": [], "errors": {}}
    client = None
    vault = VaultClient(settings)
    service = VaultService(settings.model_copy(update={"listener_interval": 1.0}))
    try:
        password = random_password()
        await ensure_redis_acl_user(admin, users[0], password=password)
        await ensure_redis_acl_user(admin, users[1])
        mount = settings.kv_mount
        await vault.kv.write(
            KV2Path(mount, secret),
            {
                "redis_host": REDIS_HOST,
                "redis_port": REDIS_PORT,
                "redis_username": users[0],
                "redis_password": password,
            },
            cas=0,
        )
        await vault.kv.write(
            KV2Path(mount, admin_secret), {"host": REDIS_HOST, "port": REDIS_PORT}, cas=0
        )
        client = await adapters.redis_client(
            service, secret=secret, client_name="maily-bench", max_connections=16
        )
        load = _Load(client, keys)
        load.start()
        try:
            await _until(lambda: load.ok >= WARMUP_OPS, 60)
            for r in range(rounds):
                ok0, failed0, t0 = load.ok, load.failed, time.perf_counter()
                generation = client.generation
                argv = ["secrets", "rotate", "--secret-types", "redis", "--json"]
                proc = await asyncio.create_subprocess_exec(
                    ctx.python,
                    str(ctx.root / "mailyctl.py"),
                    *argv,
                    *(["--force"] if r else []),
                    env=ctx.env(MAILY_ROTATION_CONFIG=str(cfg_path)),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                stdout, _ = await asyncio.wait_for(proc.communicate(), 120)
                (res,) = json.loads(stdout)["results"]
                if proc.returncode != 0 or res["status"] != "rotated":
                    raise RuntimeError(f"mailyctl secrets rotate: {res['status']}")
                previous = (await vault.kv.read(KV2Path(mount, secret))).data["redis_username"]
                previous = users[1] if previous == users[0] else users[0]

                def drained(generation: int = generation) -> bool:
                    return client.generation > generation and client.stats().old_connections == 0

                await _until(drained, 60)
                notes = await retire_due(
                    cfg_path, vault, ["redis"], past=timedelta(hours=2), env_name="development"
                )
                if not any("retired previous ACL user" in n for n in notes):
                    raise RuntimeError(f"the retirement did not run: {notes}")
                left = [c for c in await client_list(admin) if c.user == previous]
                if left:
                    raise RuntimeError(f"{len(left)} connection(s) of {previous} left")
                await asyncio.sleep(TAIL_S)
                window = time.perf_counter() - t0
                ops, failed = load.ok - ok0, load.failed - failed0
                out["ops"].append(ops)
                out["failed"].append(failed)
                out["window_s"].append(round(window, 2))
                out["rate"].append(ops / window)
                ctx.log(
                    f"redis adoption round {r + 1}/{rounds}: {ops / window:,.0f} ops/s,"
                    f" {failed} failed, {window:.1f}s"
                )
        finally:
            await load.stop()
            out["errors"] = load.error_kinds
            out["stats"] = {k: v for k, v in client.stats().__dict__.items() if k != "connected"}
    finally:
        if client is not None:
            await client.aclose()
        await service.close()
        found = [k async for k in admin.scan_iter(match=f"{keys}:*")]
        if found:
            await admin.delete(*found)
        await admin.execute_command("ACL", "DELUSER", *users)  # type: ignore[no-untyped-call]
        await admin.aclose()
        await vault.close()
    return out


def figures(ctx: Context) -> list[dict[str, Any]]:
    rounds = 2 if ctx.quick else max(3, ctx.rounds)
    description = (
        f"{WORKERS} tasks sending SET/GET/INCR through adapters.redis_client (two"
        " alternating ACL users) while `mailyctl secrets rotate --secret-types redis` runs,"
        " the client drains the previous user, and the retirement removes its passwords"
        f" (in-process engine past the grace); window = rotate start .. {TAIL_S:g}s after"
        " the retirement"
    )
    try:
        data = ctx.runner.run(_rounds(ctx, rounds))
    except Exception as exc:  # an error figure, never a crash of the whole bench
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return [
            {
                "key": key,
                "title": title,
                "description": description,
                "unit": unit,
                "better": better,
                "variants": {"redis_client": {"label": "redis_client", "error": error}},
                "goals": [],
            }
            for key, title, unit, better in (
                ("adoption_redis_rate", "Redis: ops/s through rotate + retire", "ops/s", "higher"),
                ("adoption_redis_failures", "Redis: failed ops", "ops", "lower"),
            )
        ]
    notes = {
        "ops": data["ops"],
        "failed": data["failed"],
        "window_s": data["window_s"],
        "errors": data["errors"],
        "adapter": data.get("stats", {}),
        "workers": WORKERS,
        "listener_interval_s": 1.0,
    }
    return [
        {
            "key": "adoption_redis_rate",
            "title": "Redis: ops/s through rotate + retire",
            "description": description,
            "unit": "ops/s",
            "better": "higher",
            "variants": {
                "redis_client": {"label": "adapters.redis_client", "rounds": data["rate"]}
            },
            "goals": [
                {"label": "rate", "variant": "redis_client", "op": ">=", "value": 200},
            ],
            "notes": notes,
        },
        {
            "key": "adoption_redis_failures",
            "title": "Redis: failed ops through rotate + retire",
            "description": description,
            "unit": "ops",
            "better": "lower",
            "variants": {
                "redis_client": {
                    "label": "adapters.redis_client",
                    "rounds": [float(f) for f in data["failed"]],
                }
            },
            "goals": [
                {"label": "failures", "variant": "redis_client", "op": "<=", "value": 0},
            ],
            "notes": notes,
        },
    ]
