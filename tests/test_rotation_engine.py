"""The rotation engine and `mailyctl secrets` against a real OpenBao (type jwt: pure Vault)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.jwt_keys import current_signing_key
from maily_secrets.rotation.base import RotationError
from maily_secrets.rotation.engine import RotationEngine
from maily_secrets.rotation.rotators.jwt import JwtRotator
from maily_secrets.rotation.state import RotationState, StateStore
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.smtp import Smtp
from .rotation_env import RotationEnv, mailyctl_argv, make_rotation_env
from .secrecy import assert_absent

JWT_ONLY = {"jwt": {"secret": "config", "grace": "1h"}}


@pytest.fixture
async def renv(bao: Bao, root: VaultClient, tmp_path: Path) -> AsyncIterator[RotationEnv]:
    yield await make_rotation_env(bao, root, tmp_path, types=dict(JWT_ONLY))


def run_cli(renv: RotationEnv, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mailyctl_argv(*args), capture_output=True, text=True, env=renv.env(**env), timeout=120
    )


async def config_of(renv: RotationEnv) -> tuple[dict[str, Any], int]:
    async with renv.client() as c:
        v = await c.kv.read(f"{renv.mount}/data/config")
        return v.data, v.version


async def jwt_history(renv: RotationEnv) -> list[dict[str, Any]]:
    async with renv.client() as c:
        hist = await StateStore(c, renv.mount).history("jwt")
    return [s.public() for _, _, s in hist if s is not None]


async def test_rotate_json_status_history(renv: RotationEnv) -> None:
    before, v0 = await config_of(renv)
    out = run_cli(renv, "secrets", "rotate", "--secret-types=jwt", "--json", "--yes")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (res,) = doc["results"]
    assert res["type"] == "jwt" and res["status"] == "rotated" and doc["ok"] is True
    after, v1 = await config_of(renv)
    assert v1 > v0 and after["jwt_kid"] != before.get("jwt_kid")
    assert res["version"] == v1
    # status: the type was just rotated, next due in 90 days
    st = json.loads(run_cli(renv, "secrets", "status", "--json").stdout)
    row = next(r for r in st["types"] if r["type"] == "jwt")
    assert row["last_rotated"] and not row["overdue"] and row["interval_s"] == 90 * 86400
    assert row["last_rotation_id"] == res["rotation_id"]
    # history: every step of the rotation, no value
    hist = run_cli(renv, "secrets", "history", "jwt", "--json")
    assert hist.returncode == 0
    steps = [h["step"] for h in json.loads(hist.stdout)["history"]]
    assert steps == ["created", "applied", "verified", "promoted", "finished"]
    for text in (out.stdout, out.stderr, hist.stdout):
        assert_absent(after["jwt_secret"], text, "CLI output")
        assert_absent(before["jwt_secret"], text, "CLI output")
    human = run_cli(renv, "secrets", "history", "jwt")
    assert res["rotation_id"] in human.stdout


@pytest.mark.parametrize("step", ["created", "applied", "verified", "promoted"])
async def test_crash_after_each_step_then_rerun_is_consistent(renv: RotationEnv, step: str) -> None:
    before, v0 = await config_of(renv)
    crashed = run_cli(
        renv, "secrets", "rotate", "--secret-types=jwt", "--json", MAILY_ROTATION_CRASH_AFTER=step
    )
    assert crashed.returncode == 70  # died right after writing that step, lock still held
    hist = await jwt_history(renv)
    assert hist[-1]["step"] == step and hist[-1]["outcome"] == "in_progress"
    rotation_id = hist[-1]["rotation_id"]
    # the rerun takes over the dead holder's lock and finishes the same rotation
    rerun = run_cli(renv, "secrets", "rotate", "--secret-types=jwt", "--json")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (res,) = json.loads(rerun.stdout)["results"]
    assert res["status"] == "resumed" and res["rotation_id"] == rotation_id
    after, v1 = await config_of(renv)
    hist = await jwt_history(renv)
    assert hist[-1]["step"] == "finished" and hist[-1]["outcome"] == "success"
    assert [h["rotation_id"] for h in hist] == [rotation_id] * len(hist)  # one rotation
    # consistent: the new key is current, the old one verifies during the grace
    assert after["jwt_kid"] != before.get("jwt_kid")
    (previous,) = after["jwt_previous_keys"]
    assert previous["kid"] == current_signing_key(before).kid
    assert "jwt_next_key" not in after
    # nothing lost: every version of the config is still in KV history
    async with renv.client() as c:
        for n in range(1, v1 + 1):
            await c.kv.read(f"{renv.mount}/data/config", version=n)
    assert v1 > v0


async def test_ten_concurrent_runs_rotate_once(
    renv: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", renv.bao.token)
    cfg = renv.config()
    engines = [RotationEngine(cfg, "development", actor=f"runner-{i}") for i in range(10)]
    try:
        reports = await asyncio.gather(*(e.run(["jwt"]) for e in engines))
    finally:
        for e in engines:
            await e.close()
    statuses = sorted(r.results[0].status for r in reports)
    assert statuses.count("rotated") == 1
    assert statuses.count("busy") == 9
    hist = await jwt_history(renv)
    assert len({h["rotation_id"] for h in hist}) == 1


async def last_rotated_days_ago(renv: RotationEnv, type_name: str, days: float) -> None:
    """The type's state says it was last rotated ``days`` ago: it is due without waiting."""
    async with renv.client() as c:
        store = StateStore(c, renv.mount)
        _, version = await store.read(type_name)
        state = RotationState(
            type=type_name,
            env="development",
            outcome="success",
            step="finished",
            last_success_at=datetime.now(UTC) - timedelta(days=days),
        )
        await store.write(state, cas=version)


async def test_ten_concurrent_cli_runs_with_due_rotate_once(
    bao: Bao, root: VaultClient, tmp_path: Path
) -> None:
    renv = await make_rotation_env(
        bao, root, tmp_path, types=dict(JWT_ONLY), intervals={"jwt": "1d"}
    )
    await last_rotated_days_ago(renv, "jwt", 2)  # overdue; once rotated, due in a day
    procs = [
        subprocess.Popen(
            mailyctl_argv("secrets", "rotate", "--due", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=renv.env(),
        )
        for _ in range(10)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    statuses = [json.loads(o)["results"][0]["status"] for o, _ in outs]
    assert statuses.count("rotated") == 1, statuses
    assert set(statuses) <= {"rotated", "busy", "skipped"}
    hist = await jwt_history(renv)
    assert len({h["rotation_id"] for h in hist if h["rotation_id"]}) == 1  # (1st: the seed)


async def test_due_rotates_only_overdue_types(bao: Bao, root: VaultClient, tmp_path: Path) -> None:
    types = {
        "jwt": {"secret": "config", "grace": "1h"},
        "jwt_slow": {"secret": "config-b", "rotator": "jwt", "grace": "1h"},
    }
    renv = await make_rotation_env(
        bao, root, tmp_path, types=types, intervals={"jwt": "1d", "jwt_slow": "30d"}
    )
    async with renv.client() as c:
        await c.kv.write(f"{renv.mount}/data/config-b", {"jwt_secret": "x" * 40}, cas=0)
    await last_rotated_days_ago(renv, "jwt", 2)
    out = run_cli(renv, "secrets", "rotate", "--due", "--json")
    assert out.returncode == 0, out.stderr
    res = {r["type"]: r for r in json.loads(out.stdout)["results"]}
    assert res["jwt"]["status"] == "rotated"
    assert res["jwt_slow"]["status"] == "skipped" and "not due until" in res["jwt_slow"]["reason"]
    # status shows the overdue one as overdue (before) and the slow one as fine
    st = json.loads(run_cli(renv, "secrets", "status", "--json").stdout)
    rows = {r["type"]: r for r in st["types"]}
    assert rows["jwt_slow"]["overdue"] is False


async def test_dry_run_changes_nothing(renv: RotationEnv) -> None:
    _, v0 = await config_of(renv)
    out = run_cli(renv, "secrets", "rotate", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    (res,) = json.loads(out.stdout)["results"]
    assert res["status"] == "planned"
    _, v1 = await config_of(renv)
    assert v1 == v0
    assert await jwt_history(renv) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret-types=jwt,nope"], "unknown secret type(s) nope; valid: jwt, all"),
        (["--secret-types=jwt,,aws"], "malformed --secret-types"),
        (["--secret-types="], "malformed --secret-types"),
        (["--env=nowhere"], "unknown environment 'nowhere'; valid: development"),
        (["--log-level=loud"], "unknown --log-level"),
    ],
)
async def test_bad_input_is_exit_2_and_changes_nothing(
    renv: RotationEnv, args: list[str], message: str
) -> None:
    _, v0 = await config_of(renv)
    out = run_cli(renv, "secrets", "rotate", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in " ".join(out.stderr.split())
    _, v1 = await config_of(renv)
    assert v1 == v0 and await jwt_history(renv) == []


async def test_bad_config_file_is_exit_2(renv: RotationEnv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("types: [this is not a mapping\n")
    out = run_cli(renv, "secrets", "rotate", "--config", str(bad))
    assert out.returncode == 2 and "not valid YAML" in out.stderr
    out = run_cli(renv, "secrets", "status", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "cannot read rotation config" in out.stderr
    unknown_type = run_cli(renv, "secrets", "history", "nope")
    assert unknown_type.returncode == 2 and "valid: jwt" in unknown_type.stderr


async def test_lock_held_by_a_live_run_is_busy_exit_3(renv: RotationEnv) -> None:
    lock_path = f"{renv.mount}/data/rotation/_lock"
    async with renv.client() as c:
        await c.kv.write(
            lock_path,
            {
                "held": True,
                "holder": "someone@elsewhere",
                "run_id": "r1",
                "host": "elsewhere",
                "pid": 1,
                "acquired_at": "2026-01-01T00:00:00+00:00",
                "expires_at": "2999-01-01T00:00:00+00:00",
            },
            cas=0,
        )
    _, v0 = await config_of(renv)
    out = run_cli(renv, "secrets", "rotate", "--json")
    assert out.returncode == 3
    assert json.loads(out.stdout)["results"][0]["status"] == "busy"
    assert "someone@elsewhere" in out.stdout
    _, v1 = await config_of(renv)
    assert v1 == v0
    # once it expires, the next run takes over
    async with renv.client() as c:
        cur = await c.kv.read(lock_path)
        await c.kv.write(
            lock_path, {**cur.data, "expires_at": "2000-01-01T00:00:00+00:00"}, cas=cur.version
        )
    assert run_cli(renv, "secrets", "rotate").returncode == 0


async def test_production_asks_on_a_terminal(bao: Bao, root: VaultClient, tmp_path: Path) -> None:
    renv = await make_rotation_env(bao, root, tmp_path, types=dict(JWT_ONLY))
    _, v0 = await config_of(renv)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        mailyctl_argv("secrets", "rotate", "--env=production"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=renv.env(),
        close_fds=True,
    )
    os.close(slave)
    buf = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in buf and time.monotonic() < deadline:
        try:
            buf += os.read(master, 4096)
        except OSError:
            break
    assert b"production" in buf and b"[y/N]" in buf
    os.write(master, b"n\n")
    rc = proc.wait(60)
    os.close(master)
    assert rc == 1
    _, v1 = await config_of(renv)
    assert v1 == v0
    # not on a terminal (the CronJob), or with --yes: no question
    out = run_cli(renv, "secrets", "rotate", "--env=production", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["results"][0]["status"] == "rotated"


async def test_notify_email_arrives_and_contains_no_secret(renv: RotationEnv, smtp: Smtp) -> None:
    async with renv.client() as c:
        await c.kv.update(f"{renv.mount}/data/config", lambda d: {**d, **smtp.settings()})
    renv.doc["notify"]["email"]["to"] = ["ops@maily.example"]
    renv.doc["notify"]["email"]["tls"] = "none"  # the aiosmtpd stand-in has no TLS
    renv.write()
    before, _ = await config_of(renv)
    out = run_cli(renv, "secrets", "rotate", "--secret-types=jwt", "--notify", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    email = next(n for n in doc["notifications"] if n["channel"] == "email")
    assert email["ok"] is True, email
    (msg,) = smtp.received
    assert msg["authenticated"] and msg["rcpt_tos"] == ["ops@maily.example"]
    body = msg["content"]
    assert "jwt" in body and "rotated" in body and doc["results"][0]["rotation_id"] in body
    after, _ = await config_of(renv)
    for secret in (
        before["jwt_secret"],
        after["jwt_secret"],
        after["db_password"],
        after["smtp_password"],
        after["redis_password"],
    ):
        assert_absent(secret, body, "the notification email")
        assert_absent(secret, out.stdout + out.stderr, "the CLI output")


# ---------------------------------------------------------------------------- retire policy
class _UnreachableJwt(JwtRotator):
    """The real jwt rotator, whose target "cannot be reached" when asked who uses it."""

    type_name = "jwt-usage-unreachable-test"

    async def usage(self, ctx: Any, retiring: Any, since: Any = None) -> None:
        raise RotationError("jwt usage: cannot connect to the target (test)")


async def _previous_kids(renv: RotationEnv) -> list[str]:
    data, _ = await config_of(renv)
    return [k["kid"] for k in data.get("jwt_previous_keys") or []]


async def test_unobservable_when_idle_retires_at_the_end_of_the_grace(
    bao: Bao, root: VaultClient, tmp_path: Path
) -> None:
    """jwt cannot tell who verifies with its previous key (``usage()`` None): the default
    ``when_idle`` retires it at the end of the grace, as ``at_grace`` would."""
    renv = await make_rotation_env(bao, root, tmp_path, types=dict(JWT_ONLY))
    t = [datetime.now(UTC)]
    async with renv.client() as c:
        engine = RotationEngine(renv.config(), "development", client=c, now=lambda: t[0])
        first = (await engine.run(["jwt"])).results[0]
        assert first.status == "rotated", first.reason
        old = await _previous_kids(renv)
        assert len(old) == 1
        t[0] += timedelta(minutes=30)
        res = (await engine.retire_due(["jwt"])).results[0]
        assert res.status == "skipped" and "cannot tell who uses it" in res.reason, res.reason
        assert await _previous_kids(renv) == old
        t[0] += timedelta(minutes=31)
        res = (await engine.retire_due(["jwt"])).results[0]
        assert res.status == "retired", res.reason
        assert await _previous_kids(renv) == []
        state, _ = await StateStore(c, renv.mount).read("jwt")
        assert state is not None and state.retiring == []


@pytest.mark.parametrize(("policy", "retired"), [("when_idle", False), ("at_grace", True)])
async def test_an_unreachable_target_is_never_taken_for_idle(
    bao: Bao, root: VaultClient, tmp_path: Path, policy: str, retired: bool
) -> None:
    """``usage()`` raising: ``when_idle`` keeps the previous key (and says why) long past the
    grace; ``at_grace`` retires it at the end of the grace anyway."""
    types = {
        "jwt": {
            "secret": "config",
            "grace": "1h",
            "rotator": _UnreachableJwt.type_name,
            "retire": policy,
        }
    }
    renv = await make_rotation_env(bao, root, tmp_path, types=types)
    t = [datetime.now(UTC)]
    async with renv.client() as c:
        engine = RotationEngine(renv.config(), "development", client=c, now=lambda: t[0])
        assert (await engine.run(["jwt"])).results[0].status == "rotated"
        t[0] += timedelta(hours=5)
        res = (await engine.retire_due(["jwt"])).results[0]
        state, _ = await StateStore(c, renv.mount).read("jwt")
    assert state is not None
    if retired:
        assert res.status == "retired" and "grace ended" in res.reason, res.reason
        assert state.retiring == [] and await _previous_kids(renv) == []
    else:
        assert res.status == "skipped" and "cannot connect to the target" in res.reason
        (item,) = state.retiring
        assert "cannot connect" in item.observed_error and item.observed is None
        assert len(await _previous_kids(renv)) == 1


async def test_cli_retire_and_wait_retire(renv: RotationEnv) -> None:
    """``secrets retire --json`` (nothing due yet: exit 0) and ``rotate --wait-retire``
    with a bad duration (exit 2, nothing rotated)."""
    out = run_cli(renv, "secrets", "rotate", "--secret-types=jwt", "--json", "--yes")
    assert out.returncode == 0, out.stderr
    before, v0 = await config_of(renv)
    out = run_cli(renv, "secrets", "retire", "--secret-types=jwt", "--json", "--yes")
    assert out.returncode == 0, out.stderr
    (res,) = json.loads(out.stdout)["results"]
    assert res["status"] == "skipped" and "end of the grace" in res["reason"], res
    (decision,) = res["retirement"]
    assert decision["action"] == "wait" and decision["next_check"]
    bad = run_cli(renv, "secrets", "rotate", "--secret-types=jwt", "--wait-retire", "soon")
    assert bad.returncode == 2 and "--wait-retire" in bad.stderr, bad.stderr
    assert await config_of(renv) == (before, v0)
    st = json.loads(run_cli(renv, "secrets", "status", "--json").stdout)
    (row,) = st["types"]
    assert row["adoption"]["retire"] == "when_idle"
    (prev,) = row["adoption"]["previous"]
    assert prev["observable"] is False and prev["action"] == "wait"
