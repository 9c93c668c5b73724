"""`./mailyctl.py dev up | down | status | env` and the demo, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.cli import mailyctl_env, run_mailyctl
from .secrecy import assert_absent, assert_differ, assert_same

ROOT = Path(__file__).resolve().parents[1]


def mailyctl(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_mailyctl(*args, env=mailyctl_env(MAILY_DEV_DIR=str(state)), check=check)


async def read_all(addr: str, token: str) -> dict[str, dict[str, object]]:
    async with VaultClient(VaultSettings(addr=addr, token=token)) as c:
        return {
            name: (await c.kv.read(f"maily/data/{name}")).data
            for name in ("config", "api-keys", "credentials")
        }


def test_dev_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    home_token = Path(os.environ["HOME"]) / ".vault-token"

    up = mailyctl("dev", "up", "--port", "0", state=state)
    assert "started" in up.stdout and "created" in up.stdout
    status = json.loads(mailyctl("dev", "status", "--json", state=state).stdout)
    assert status["running"] and status["healthy"] and status["version"]
    addr, pid = status["addr"], status["pid"]
    try:
        # `dev env` is what a shell evals
        env_line = mailyctl("dev", "env", state=state).stdout.strip()
        assert env_line.startswith(f"export VAULT_ADDR={addr} VAULT_TOKEN=")
        exported = dict(w.split("=", 1) for w in shlex.split(env_line)[1:])
        token = exported["VAULT_TOKEN"]
        assert (state / "token").stat().st_mode & 0o077 == 0

        # the token is not in the server's argv, and ~/.vault-token is untouched
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert_absent(token, cmdline, "the server's argv")
        assert not home_token.exists()

        # the declarative audit device is there and logs
        audit = Path(status["audit_log"])
        assert audit.exists() and audit.stat().st_size > 0

        secrets = asyncio.run(read_all(addr, token))
        cfg = secrets["config"]
        for key in (
            "db_host db_port db_username db_password redis_host redis_port redis_password"
            " jwt_secret smtp_host smtp_port smtp_username smtp_password"
        ).split():
            assert key in cfg, key
        assert isinstance(cfg["db_port"], int) and isinstance(cfg["redis_port"], int)
        assert {"stripe", "sendgrid", "openai"} <= set(secrets["api-keys"])
        aws = secrets["credentials"]["aws"]
        assert isinstance(aws, dict)
        assert {"aws_access_key", "aws_secret_key", "aws_region"} <= set(aws)
        # no generated value is printed by `dev up`
        for v in [cfg["db_password"], cfg["jwt_secret"], aws["aws_secret_key"], token]:
            assert_absent(v, up.stdout + up.stderr, "dev up output")

        # up twice is harmless: same server, same values
        again = mailyctl("dev", "up", state=state)
        assert "already running" in again.stdout and "created" not in again.stdout
        assert_same(asyncio.run(read_all(addr, token)), secrets, "secrets after a second up")

        # `make demo`'s main job runs against it, with masked values
        demo = subprocess.run(
            [sys.executable, "-m", "maily_secrets.dev.demo"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "MAILY_DEV_DIR": str(state), "COLUMNS": "200"},
            timeout=120,
        )
        assert demo.returncode == 0, demo.stderr
        assert "get_config()" in demo.stdout and "****** (32 chars)" in demo.stdout
        assert "the listener fired" in demo.stdout
        assert "round trip ok" in demo.stdout and "(batched): ok" in demo.stdout
        # part 9: a pool through the database rotation and the retirement, no failure
        assert re.search(
            r"pool: [\d,]+ queries, 0 failed .*through rotation \S+ -> \S+ and retirement of",
            demo.stdout,
        ), demo.stdout[-2000:]
        for v in [cfg["db_password"], cfg["jwt_secret"], aws["aws_secret_key"], token]:
            assert_absent(v, demo.stdout + demo.stderr, "demo output")
    finally:
        down = mailyctl("dev", "down", state=state)
    assert "stopped" in down.stdout
    assert not state.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    st = mailyctl("dev", "status", state=state, check=False)
    assert st.returncode == 1 and "not running" in st.stdout
    assert "No dev server" in mailyctl("dev", "down", state=state).stdout


def test_two_dev_servers_get_different_random_secrets(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        mailyctl("dev", "up", "--port", "0", state=a)
        mailyctl("dev", "up", "--port", "0", state=b)
        sa = json.loads(mailyctl("dev", "status", "--json", state=a).stdout)
        sb = json.loads(mailyctl("dev", "status", "--json", state=b).stdout)
        ta = (a / "token").read_text().strip()
        tb = (b / "token").read_text().strip()
        assert_differ(ta, tb, "dev root tokens")
        ca = asyncio.run(read_all(sa["addr"], ta))["config"]
        cb = asyncio.run(read_all(sb["addr"], tb))["config"]
        assert_differ(ca["db_password"], cb["db_password"], "generated db passwords")
        assert_differ(ca["jwt_secret"], cb["jwt_secret"], "generated JWT secrets")
    finally:
        mailyctl("dev", "down", state=a)
        mailyctl("dev", "down", state=b)


def test_down_does_not_kill_a_foreign_pid(tmp_path: Path) -> None:
    """A stale pid file pointing at some other process: `dev down` leaves it alone."""
    state = tmp_path / "dev"
    state.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (state / "server.json").write_text(
            json.dumps(
                {
                    "pid": sleeper.pid,
                    "addr": "http://127.0.0.1:1",
                    "port": 1,
                    "state_dir": str(state),
                    "audit_log": "",
                    "server_log": "",
                    "started_at": 0,
                }
            )
        )
        out = mailyctl("dev", "down", state=state)
        assert "No dev server" in out.stdout
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_help_explains() -> None:
    out = mailyctl("dev", "--help", state=Path("/nonexistent")).stdout
    for word in ("up", "down", "status", "env"):
        assert word in out
    up_help = mailyctl("dev", "up", "--help", state=Path("/nonexistent")).stdout
    assert "maily-enc-key" in up_help and "--port" in up_help
