"""The rotation lock cannot hide or corrupt an outcome (real OpenBao, the jwt type).

A rotator that waits at a gate in ``apply`` holds the run at a known point; the
test then breaks the lock there (a failed release, a takeover, a heartbeat that
cannot renew, a cancellation) and checks what the run reports and what the next
run does. Time is a :class:`ManualClock`: nothing waits for a lock to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from maily_secrets.clock import ManualClock
from maily_secrets.rotation.base import RotationContext
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.report import RunReport
from maily_secrets.rotation.rotators.jwt import JwtRotator
from maily_secrets.rotation.state import StateStore
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.smtp import Smtp
from .rotation_env import RotationEnv, make_rotation_env


# ---------------------------------------------------------------------------- a gated rotator
@dataclass
class Gate:
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)


class GatedJwt(JwtRotator):
    """The jwt rotator, but ``apply`` waits for the test (per KV mount) first."""

    type_name: ClassVar[str] = "gated_jwt"
    gates: ClassVar[dict[str, Gate]] = {}

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        gate = self.gates.get(ctx.kv_mount)
        if gate is not None:
            gate.entered.set()
            await gate.go.wait()
        await super().apply(ctx, pending)


TTL_S = 30.0  # lock_ttl of make_rotation_env


@dataclass
class World:
    bao: Bao
    root: VaultClient
    renv: RotationEnv
    clock: ManualClock
    policy: str
    token: str
    gate: Gate
    closers: list[VaultClient] = field(default_factory=list)

    @property
    def lock_path(self) -> str:
        return f"{self.renv.mount}/data/rotation/_lock"

    def client(self, token: str | None = None, addr: str | None = None) -> VaultClient:
        kw: dict[str, Any] = {"kv_mount": self.renv.mount, "token": token or self.token}
        if addr:
            kw["addr"] = addr
        c = self.bao.client(**kw)
        self.closers.append(c)
        return c

    def engine(self, client: VaultClient | None = None, actor: str = "gated") -> RotationEngine:
        return RotationEngine(
            self.renv.config(),
            "development",
            client=client or self.client(),
            actor=actor,
            clock=self.clock,
        )

    async def set_policy(self, *, lock_writable: bool) -> None:
        text = (
            f'path "{self.renv.mount}/*" {{ capabilities = ["create", "read", "update", "list"] }}'
        )
        if not lock_writable:
            text += f'\npath "{self.lock_path}" {{ capabilities = ["read"] }}'
        await self.root.write(f"sys/policies/acl/{self.policy}", {"policy": text})

    async def start(self, engine: RotationEngine, **kw: Any) -> asyncio.Task[RunReport]:
        task = asyncio.get_running_loop().create_task(engine.run(["jwt"], **kw))
        await asyncio.wait_for(self.gate.entered.wait(), 30)
        return task

    async def history(self) -> list[dict[str, Any]]:
        hist = await StateStore(self.root_mount_client(), self.renv.mount).history("jwt")
        return [s.public() for _, _, s in hist if s is not None]

    def root_mount_client(self) -> VaultClient:
        return self.client(token=self.bao.token)

    async def lock(self) -> tuple[dict[str, Any], int]:
        data, version = await self.root.kv.read_with_version(self.lock_path)
        assert data is not None
        return data, version


@pytest.fixture
async def world(bao: Bao, root: VaultClient, tmp_path: Path) -> AsyncIterator[World]:
    renv = await make_rotation_env(
        bao,
        root,
        tmp_path,
        types={"jwt": {"secret": "config", "grace": "1h", "rotator": "gated_jwt"}},
    )
    policy = f"rot-lock-{uuid.uuid4().hex[:8]}"
    w = World(bao, root, renv, ManualClock(wall_start=time.time()), policy, "", Gate())
    await w.set_policy(lock_writable=True)
    r = await root.write("auth/token/create", {"policies": [policy], "ttl": "15m"})
    w.token = str((r.body or {})["auth"]["client_token"])
    GatedJwt.gates[renv.mount] = w.gate
    try:
        yield w
    finally:
        GatedJwt.gates.pop(renv.mount, None)
        for c in w.closers:
            await c.close()
        with contextlib.suppress(Exception):
            await root.write("auth/token/revoke", {"token": w.token})
        await root.delete(f"sys/policies/acl/{policy}")


async def signing_kid(w: World) -> str:
    """The kid of the key in use (``apply`` publishes the next key; ``promote`` switches)."""
    return str((await w.root.kv.read(f"{w.renv.mount}/data/config")).data.get("jwt_kid"))


async def resume_ungated(w: World) -> RunReport:
    """The next run (no gate, root token, the same clock): it must get the lock at once."""
    GatedJwt.gates.pop(w.renv.mount, None)
    engine = w.engine(w.root_mount_client(), actor="next-run")
    return await asyncio.wait_for(engine.run(["jwt"]), 60)


# ---------------------------------------------------------------------------- 1. release
async def test_failed_release_keeps_report_notification_and_metrics(
    world: World, smtp: Smtp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    await w.root.kv.update(f"{w.renv.mount}/data/config", lambda d: {**d, **smtp.settings()})
    w.renv.doc["notify"]["email"].update({"to": ["ops@maily.example"], "tls": "none"})
    w.renv.write()
    prom = tmp_path / "rotation.prom"
    monkeypatch.setenv("MAILY_METRICS_TEXTFILE", str(prom))
    task = await w.start(w.engine(), notify=True)
    await w.set_policy(lock_writable=False)  # the release will be refused (403)
    w.gate.go.set()
    report = await asyncio.wait_for(task, 60)  # old code: PermissionDenied replaced the report
    (res,) = report.results
    assert res.status == "rotated" and report.ok
    assert any("could not be released" in x for x in report.warnings), report.warnings
    assert "could not be released" in str(report.to_json()["warnings"])
    email = next(n for n in report.notifications if n["channel"] == "email")
    assert email["ok"] is True, email
    (msg,) = smtp.received
    assert res.rotation_id and res.rotation_id in msg["content"]
    assert "could not be released" in msg["content"]  # the email says so too
    assert "maily_secret_rotation" in prom.read_text()
    # the lock was not freed; it expires by itself, and then the next run takes it
    lock, _ = await w.lock()
    assert lock["held"] is True and lock["run_id"] == report.run_id
    await w.clock.advance(TTL_S + 1)
    nxt = await resume_ungated(w)
    assert nxt.results[0].status == "rotated", nxt.results[0]


# ---------------------------------------------------------------------------- 2. lost lock
async def test_lock_taken_over_stops_before_next_step_and_next_run_resumes(world: World) -> None:
    w = world
    kid0 = await signing_kid(w)
    task = await w.start(w.engine())
    # another run took the lock (e.g. this one was paused past its expiry)
    cur, version = await w.lock()
    await w.root.kv.write(
        w.lock_path,
        {**cur, "holder": "other@elsewhere", "run_id": "other-run", "host": "elsewhere"},
        cas=version,
    )
    w.gate.go.set()
    report = await asyncio.wait_for(task, 60)
    (res,) = report.results
    assert res.status == "failed" and "lost the rotation lock" in res.reason, res
    assert res.step == "verify" and "other@elsewhere" in res.reason
    hist = await w.history()
    assert hist[-1]["step"] == "applied" and hist[-1]["outcome"] == "in_progress"
    assert await signing_kid(w) == kid0  # nothing promoted
    lock, _ = await w.lock()
    assert lock["run_id"] == "other-run" and lock["held"] is True  # not "released" by us
    # the other holder finishes; the next run resumes the saved rotation
    cur, version = await w.lock()
    await w.root.kv.write(w.lock_path, {**cur, "held": False}, cas=version)
    nxt = await resume_ungated(w)
    (again,) = nxt.results
    assert again.status == "resumed" and again.rotation_id == res.rotation_id, again
    assert await signing_kid(w) != kid0
    steps = [h["step"] for h in await w.history()]
    assert steps == ["created", "applied", "verified", "promoted", "finished"]


async def test_heartbeat_that_cannot_renew_stops_the_run(world: World) -> None:
    w = world
    kid0 = await signing_kid(w)
    task = await w.start(w.engine())
    await w.set_policy(lock_writable=False)  # every renewal now fails (403)
    await w.clock.advance(TTL_S + 1)  # three heartbeats fail; the lock has expired
    w.gate.go.set()
    report = await asyncio.wait_for(task, 60)
    (res,) = report.results
    assert res.status == "failed" and "expired before the heartbeat" in res.reason, res
    assert res.step == "verify"
    assert await signing_kid(w) == kid0
    assert (await w.history())[-1]["step"] == "applied"
    await w.set_policy(lock_writable=True)
    nxt = await resume_ungated(w)  # the expired lock is taken over at once
    assert nxt.results[0].status == "resumed" and nxt.results[0].rotation_id == res.rotation_id


# ---------------------------------------------------------------------------- 3. cancellation
class LossyProxy:
    """A TCP proxy to the real OpenBao; while ``lose_answers`` is set, the server's
    answers are dropped (the request still reaches the server and takes effect)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lose_answers = False
        self.lost = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
        for wr in list(self._writers):
            wr.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        self._writers.update({writer, up_w})

        async def pipe(r: asyncio.StreamReader, wr: asyncio.StreamWriter, answers: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    if answers and self.lose_answers:
                        self.lost.set()
                        continue
                    wr.write(data)
                    await wr.drain()
            wr.close()

        await asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))


@pytest.fixture
async def lossy(world: World) -> AsyncIterator[LossyProxy]:
    host, port = world.bao.addr.removeprefix("http://").rsplit(":", 1)
    p = LossyProxy(host, int(port))
    await p.up()
    try:
        yield p
    finally:
        await p.down()


async def test_run_cancelled_while_a_heartbeat_answer_is_lost_frees_the_lock(
    world: World, lossy: LossyProxy
) -> None:
    w = world
    task = await w.start(w.engine(w.client(addr=lossy.addr)))
    _, before = await w.lock()
    lossy.lose_answers = True
    await w.clock.advance(TTL_S / 3)  # the heartbeat renews; OpenBao applies it, the answer is lost
    await asyncio.wait_for(lossy.lost.wait(), 30)
    _, after = await w.lock()
    assert after == before + 1  # the renewal landed
    lossy.lose_answers = False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lock, _ = await w.lock()
    assert lock["held"] is False, lock  # old code: "taken over by another run; not releasing"
    nxt = await resume_ungated(w)  # at once, no waiting for an expiry
    assert nxt.results[0].status == "resumed", nxt.results[0]


async def test_cancelled_heartbeat_stops_the_run_and_frees_the_lock(world: World) -> None:
    w = world
    engine = w.engine()
    task = await w.start(engine)
    lock = engine._lock
    assert lock is not None and lock._beat is not None
    lock._beat.cancel()  # nobody renews the lock any more
    w.gate.go.set()
    report = await asyncio.wait_for(task, 60)
    (res,) = report.results
    assert res.status == "failed" and "heartbeat was cancelled" in res.reason, res
    doc, _ = await w.lock()
    assert doc["held"] is False
    nxt = await resume_ungated(w)
    assert nxt.results[0].status == "resumed" and nxt.results[0].rotation_id == res.rotation_id
