"""Adoption under load, AWS and SMTP: operations per second and failed operations through
``adapters.aws_session`` (moto) and ``adapters.smtp_sender`` (aiosmtpd with AUTH) while
``mailyctl secrets rotate`` runs for the type and through the retirement at the end of
the grace.

One round of a type, against the driver's OpenBao (a KV v2 mount of this module's own):

* AWS: a new IAM user in a moto server (IAM authentication on: a retired key is refused
  as on AWS) and its key in the secret; an ``aws_session`` (listener every 0.2 s) and
  ``THREADS`` threads calling ``sts:GetCallerIdentity`` through one client of it;
* SMTP: a new username in the SMTP stand-in of ``mailyctl dev up`` (aiosmtpd in a process
  of its own, authenticating against its registry; the hook provider);
  an ``smtp_sender`` (pool of 4) and ``TASKS`` tasks sending one message each in a loop;
* the window: from the start of ``mailyctl secrets rotate --secret-types=<type>`` (a
  subprocess) until the adapter switched, every caller completed a call started after the
  switch, the engine retired the previous credential (in process, ``now`` two hours on:
  past the 1 h grace) and ``AFTER`` more calls succeeded. Rate = calls in the window /
  its seconds; failures = calls that raised in it (goal 0).

After each AWS round the same threads call through a plain boto3 client with a fixed
key (no adapter, no rotation) for as long (at most 5 s): variant ``plain``, the ceiling
of moto on this machine, so that a rate under the goal can be told apart from a cost of
the adapter. Types alternate round by round (machine noise hits both alike). Called by
``bench_adoption.py``: ``figures(ctx)`` (the contract of ``bench_context.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml
from bench_context import Context

THREADS = 6  # AWS callers (threads: boto3 blocks)
TASKS = 8  # SMTP senders (tasks on the loop)
POOL = 4  # SMTP connections
AFTER = 100  # calls that must succeed after the retirement, in the window
LISTENER_INTERVAL = 0.2
REGION = "us-east-1"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


async def _until(cond: Callable[[], bool], within: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached within {within}s")
        await asyncio.sleep(0.02)


class _World:
    """What every round shares: the mount, moto (admin key), the SMTP stand-in."""

    def __init__(self, ctx: Context) -> None:
        from maily_secrets.dev.standins import (
            CredentialStore,
            MotoStandin,
            SmtpStandin,
            moto_enable_auth,
            moto_setup_user,
        )

        self.ctx = ctx
        self.mount = f"adopt-bench-{secrets.token_hex(4)}"
        self.dir = Path(tempfile.mkdtemp(prefix="adoption-", dir=ctx.scratch))
        (self.dir / "moto").mkdir(mode=0o700)
        self.moto = MotoStandin(self.dir / "moto")
        info, _ = self.moto.start()
        self.moto_addr = info.addr
        self.admin = moto_setup_user(info.addr, "admin", ADMIN_POLICY)
        moto_enable_auth(info.addr)
        # the SMTP stand-in of `mailyctl dev up`, a process of its own (as a real server is)
        (self.dir / "smtp").mkdir(mode=0o700)
        self.smtp = SmtpStandin(self.dir / "smtp")
        smtp_info, _ = self.smtp.start()
        self.smtp_port = smtp_info.port
        self.store = CredentialStore(self.smtp.store_path)
        self.default_yaml = ctx.root / "src" / "maily_secrets" / "rotation" / "default_config.yaml"

    def settings(self, **kw: Any) -> Any:
        from pydantic import SecretStr

        from maily_secrets.settings import VaultSettings

        return VaultSettings(
            addr=self.ctx.addr,
            token=SecretStr(self.ctx.token),
            auth_method="token",
            kv_mount=self.mount,
            snapshot_path=None,
            **kw,
        )

    def iam(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            "iam",
            endpoint_url=self.moto_addr,
            region_name=REGION,
            aws_access_key_id=self.admin[0],
            aws_secret_access_key=self.admin[1],
        )

    def config(self, type_name: str, secret: str, options: dict[str, Any]) -> Path:
        doc = yaml.safe_load(self.default_yaml.read_text())
        doc["types"] = {type_name: {"secret": secret, "grace": "1h", "options": options}}
        doc["defaults"]["intervals"] = {type_name: "90d"}
        prefix = f"rotation-{secrets.token_hex(4)}"
        for env in doc["environments"].values():
            env.pop("intervals", None)
            env["state_prefix"] = prefix
            env["vault"] = {"addr": self.ctx.addr, "kv_mount": self.mount, "auth_method": "token"}
            env["lock_ttl"] = "30s"
        path = self.dir / f"rotation-{secrets.token_hex(4)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    async def setup(self) -> None:
        from maily_secrets.vault.client import VaultClient

        async with VaultClient(self.settings()) as c:
            await c.write(f"sys/mounts/{self.mount}", {"type": "kv", "options": {"version": "2"}})
            await c.kv.configure(self.mount)

    async def teardown(self) -> None:
        from maily_secrets.vault.client import VaultClient

        async with VaultClient(self.settings()) as c:
            await c.delete(f"sys/mounts/{self.mount}")

    def stop(self) -> None:
        self.smtp.stop()
        self.moto.stop()

    async def rotate(self, type_name: str, config: Path) -> None:
        """``mailyctl secrets rotate --secret-types=<type>`` as a subprocess."""
        proc = await asyncio.create_subprocess_exec(
            self.ctx.python,
            str(self.ctx.root / "mailyctl.py"),
            "secrets",
            "rotate",
            f"--secret-types={type_name}",
            env=self.ctx.env(MAILY_ROTATION_CONFIG=str(config)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 180)
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"mailyctl secrets rotate exited {proc.returncode}: {tail[0][:200]}")

    async def retire(self, type_name: str, config: Path) -> None:
        """The engine at ``now`` + 2 h (past the 1 h grace): retires, skips the rotation."""
        from maily_secrets.rotation.config import RotationConfig
        from maily_secrets.rotation.engine import RotationEngine
        from maily_secrets.vault.client import VaultClient

        async with VaultClient(self.settings()) as c:
            engine = RotationEngine(
                RotationConfig.load(config),
                "development",
                client=c,
                now=lambda: datetime.now(UTC) + timedelta(hours=2),
            )
            res = (await engine.run([type_name], due_only=True)).results[0]
        if res.status != "skipped" or any("failed" in n for n in res.notes):
            raise RuntimeError(f"{type_name} retirement: {res.status} {res.reason} {res.notes}")


# ---------------------------------------------------------------------------- AWS
class _Threads:
    def __init__(self, call: Callable[[], Any], n: int) -> None:
        self.call, self.ok, self.failed = call, 0, 0
        self.last_start = [0.0] * n
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.call()
            except Exception:  # counted
                with self._lock:
                    self.failed += 1
            else:
                with self._lock:
                    self.ok += 1
            self.last_start[i] = t

    def start(self) -> None:
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            await asyncio.to_thread(t.join)


async def _aws_round(w: _World) -> dict[str, Any]:
    from maily_secrets import adapters
    from maily_secrets.dev.standins import SELF_ROTATION_POLICY
    from maily_secrets.service import VaultService
    from maily_secrets.vault.client import VaultClient

    iam = w.iam()
    user = f"bench-{secrets.token_hex(4)}"
    await asyncio.to_thread(iam.create_user, UserName=user)
    await asyncio.to_thread(
        iam.put_user_policy,
        UserName=user,
        PolicyName="p",
        PolicyDocument=json.dumps(SELF_ROTATION_POLICY),
    )
    key = (await asyncio.to_thread(iam.create_access_key, UserName=user))["AccessKey"]
    name = f"credentials-{secrets.token_hex(4)}"
    data = {
        "aws": {
            "aws_access_key": key["AccessKeyId"],
            "aws_secret_key": key["SecretAccessKey"],
            "aws_region": REGION,
        }
    }
    async with VaultClient(w.settings()) as c:
        await c.kv.write(f"{w.mount}/data/{name}", data, cas=0)
    config = w.config("aws", name, {"endpoint_url": w.moto_addr, "verify_timeout": 30})
    svc = VaultService(w.settings(listener_interval=LISTENER_INTERVAL))
    session = await adapters.aws_session(svc, secret=name)
    sts = session.client("sts", endpoint_url=w.moto_addr)
    load = _Threads(sts.get_caller_identity, THREADS)
    load.start()
    try:
        await _until(lambda: load.ok >= 20, what="aws warm-up")
        ok0, failed0, t0 = load.ok, load.failed, time.perf_counter()
        cpu0 = time.process_time()
        await w.rotate("aws", config)
        await _until(lambda: session.generation >= 2, what="aws_session switch")
        switched = session.switched_at[0]
        await _until(lambda: min(load.last_start) > switched, what="aws callers past the switch")
        await w.retire("aws", config)
        keys = await asyncio.to_thread(iam.list_access_keys, UserName=user)
        left = {k["AccessKeyId"] for k in keys["AccessKeyMetadata"]}
        if key["AccessKeyId"] in left:
            raise RuntimeError("aws: the previous key was not retired")
        target = load.ok + AFTER
        await _until(lambda: load.ok >= target, what="aws calls after the retirement")
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        ok, failed = load.ok - ok0, load.failed - failed0
    finally:
        await load.stop()
        await session.close()
        await svc.close()
    stats = session.stats()
    return {
        "ops": ok + failed,
        "failed": failed,
        "seconds": round(seconds, 3),
        "rate": (ok + failed) / seconds,
        "cpu_us_per_op": cpu / max(1, ok + failed) * 1e6,
        "signed_per_generation": stats["signed_per_generation"],
    }


async def _aws_plain_round(w: _World, seconds: float) -> dict[str, Any]:
    """The ceiling of this machine and moto: the same callers through a plain boto3 client
    with a fixed key, no rotation, for ``seconds``."""
    import boto3

    sts = boto3.session.Session().client(
        "sts",
        endpoint_url=w.moto_addr,
        region_name=REGION,
        aws_access_key_id=w.admin[0],
        aws_secret_access_key=w.admin[1],
    )
    load = _Threads(sts.get_caller_identity, THREADS)
    load.start()
    try:
        await _until(lambda: load.ok >= 20, what="plain warm-up")
        ok0, failed0, t0 = load.ok, load.failed, time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        ops = load.ok - ok0 + load.failed - failed0
    finally:
        await load.stop()
    return {
        "ops": ops,
        "failed": load.failed - failed0,
        "seconds": round(elapsed, 3),
        "rate": ops / elapsed,
        "cpu_us_per_op": cpu / max(1, ops) * 1e6,
    }


# ---------------------------------------------------------------------------- SMTP
def _message(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "noreply@maily.test"
    m["To"] = f"user{n % 10}@example.test"
    m["Subject"] = f"bench {n}"
    m.set_content("hello")
    return m


async def _smtp_round(w: _World) -> dict[str, Any]:
    from maily_secrets import adapters
    from maily_secrets.dev.standins import smtp_hook_argv
    from maily_secrets.service import VaultService
    from maily_secrets.vault.client import VaultClient

    username = f"bench-{secrets.token_hex(4)}"
    password = "bench-" + uuid.uuid4().hex
    w.store.add(username, password, f"initial-{secrets.token_hex(4)}")
    name = f"config-{secrets.token_hex(4)}"
    data = {
        "smtp_host": "127.0.0.1",
        "smtp_port": str(w.smtp_port),
        "smtp_username": username,
        "smtp_password": password,
    }
    async with VaultClient(w.settings()) as c:
        await c.kv.write(f"{w.mount}/data/{name}", data, cas=0)
    options = {
        "provider": "hook",
        "tls": "none",  # the stand-in has no TLS: plaintext AUTH on loopback, said explicitly
        "hook": smtp_hook_argv(w.store.path),
        "retire_hook": True,
        "verify_timeout": 30,
    }
    config = w.config("smtp", name, options)
    svc = VaultService(w.settings(listener_interval=LISTENER_INTERVAL))
    sender = await adapters.smtp_sender(svc, secret=name, tls="none", max_size=POOL)
    counts = {"ok": 0, "failed": 0}
    stop = asyncio.Event()

    async def run(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await sender.send(_message(n))
            except Exception:  # counted
                counts["failed"] += 1
            else:
                counts["ok"] += 1
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(run(i)) for i in range(TASKS)]
    try:
        await _until(lambda: counts["ok"] >= 20, what="smtp warm-up")
        ok0, failed0, t0 = counts["ok"], counts["failed"], time.perf_counter()
        await w.rotate("smtp", config)
        await _until(lambda: sender.generation >= 2, what="smtp_sender switch")
        await _until(lambda: 1 not in sender.stats()["connections"], what="old logins closed")
        await w.retire("smtp", config)
        if w.store.check(username, password):
            raise RuntimeError("smtp: the previous password was not retired")
        target = counts["ok"] + AFTER
        await _until(lambda: counts["ok"] >= target, what="smtp sends after the retirement")
        seconds = time.perf_counter() - t0
        ok, failed = counts["ok"] - ok0, counts["failed"] - failed0
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await sender.close()
        await svc.close()
    stats = sender.stats()
    return {
        "ops": ok + failed,
        "failed": failed,
        "seconds": round(seconds, 3),
        "rate": (ok + failed) / seconds,
        "connections_opened": stats["opened"],
        "auth_retries": stats["auth_retries"],
    }


# ---------------------------------------------------------------------------- figures
def _figures(
    kind: str, label: str, rounds: list[dict[str, Any]], load: Any
) -> list[dict[str, Any]]:
    notes = {
        "rounds": rounds,
        "load_average_before_after": load,
        "threads_or_tasks": THREADS if kind == "aws" else TASKS,
        "listener_interval_s": LISTENER_INTERVAL,
        "after_retirement_calls": AFTER,
    }
    what = (
        "sts:GetCallerIdentity through one boto3 client of adapters.aws_session (moto server,"
        f" IAM auth on; {THREADS} threads)"
        if kind == "aws"
        else f"one message per send through adapters.smtp_sender (aiosmtpd with AUTH; {TASKS}"
        f" tasks, a pool of {POOL})"
    )
    window = (
        f"from the start of `mailyctl secrets rotate --secret-types={kind}` through the"
        " retirement at the end of the grace"
    )
    return [
        {
            "key": f"adoption_{kind}_rate",
            "title": f"{label}: operations/s during rotation + retirement",
            "description": f"{what}, {window}",
            "unit": "ops/s",
            "better": "higher",
            "variants": {kind: {"label": label, "rounds": [round(r["rate"], 1) for r in rounds]}},
            "goals": [{"label": "rate", "variant": kind, "op": ">=", "value": 200}],
            "notes": notes,
        },
        {
            "key": f"adoption_{kind}_failures",
            "title": f"{label}: failed operations during rotation + retirement",
            "description": f"{what}, {window}; operations that raised",
            "unit": "failed ops",
            "better": "lower",
            "variants": {kind: {"label": label, "rounds": [float(r["failed"]) for r in rounds]}},
            "goals": [{"label": "failures", "variant": kind, "op": "<=", "value": 0}],
            "notes": {"ops_per_round": [r["ops"] for r in rounds]},
        },
    ]


def figures(ctx: Context) -> list[dict[str, Any]]:
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    w = _World(ctx)
    out: dict[str, list[dict[str, Any]]] = {"aws": [], "smtp": []}
    plain: list[float] = []
    try:
        ctx.runner.run(w.setup())
        try:
            for r in range(ctx.rounds):
                order = ["aws", "smtp"] if r % 2 == 0 else ["smtp", "aws"]
                for kind in order:
                    fn = _aws_round if kind == "aws" else _smtp_round
                    res = ctx.runner.run(fn(w))
                    out[kind].append(res)
                    ctx.log(
                        f"adoption {kind} round {r + 1}/{ctx.rounds}: {res['ops']} ops in"
                        f" {res['seconds']:.2f}s = {res['rate']:.0f}/s, {res['failed']} failed"
                    )
                    if kind == "aws":
                        base = ctx.runner.run(_aws_plain_round(w, min(res["seconds"], 5.0)))
                        plain.append(base)
                        ctx.log(f"adoption aws plain boto3 round {r + 1}: {base['rate']:.0f}/s")
        finally:
            ctx.runner.run(w.teardown())
    finally:
        w.stop()
    load = [load_before, [round(x, 2) for x in os.getloadavg()]]
    aws = _figures("aws", "aws_session (boto3)", out["aws"], load)
    aws[0]["variants"]["aws"]["cpu_us_per_op"] = [round(r["cpu_us_per_op"]) for r in out["aws"]]
    aws[0]["variants"]["plain"] = {
        "label": "plain boto3, fixed key, no rotation (moto's ceiling here)",
        "rounds": [round(x["rate"], 1) for x in plain],
        "cpu_us_per_op": [round(x["cpu_us_per_op"]) for x in plain],
    }
    return [*aws, *_figures("smtp", "smtp_sender (aiosmtplib)", out["smtp"], load)]


__all__ = ["figures"]
