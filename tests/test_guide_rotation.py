"""The guide's "Secret Rotation" commands, verbatim, against real systems.

`mailyctl dev up` gives a real OpenBao, the machine's PostgreSQL (two login roles)
and Redis (an ACL user), and local stand-ins for AWS IAM/STS (moto server) and an
SMTP provider (aiosmtpd with AUTH). The rotation config is the one `dev up` writes,
with `production` pointing at this server. Every command runs as the guide shows
it, through a shell, from the repository root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .guide import ROOT, code_blocks
from .secrecy import assert_absent


class DevStack:
    def __init__(self, state: Path, env: dict[str, str]) -> None:
        self.state = state
        self.env = env

    async def secrets(self) -> dict[str, Any]:
        settings = VaultSettings(addr=self.env["VAULT_ADDR"], token=self.env["VAULT_TOKEN"])
        async with VaultClient(settings) as c:
            return {
                n: (await c.kv.read(f"maily/data/{n}")).data
                for n in ("config", "api-keys", "credentials")
            }

    def mails(self) -> list[str]:
        return [p.read_text(errors="replace") for p in sorted(self.state.rglob("*.eml"))]


#: identifiers, not secrets: a retirement's report names the login role / ACL user it retired
NOT_SECRET_KEYS = ("db_username", "redis_username")


def _values(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [v for k, x in doc.items() if k not in NOT_SECRET_KEYS for v in _values(x)]
    if isinstance(doc, list):
        return [v for x in doc for v in _values(x)]
    return [doc] if isinstance(doc, str) and len(doc) >= 16 else []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    state = tmp_path_factory.mktemp("guide-dev")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "MAILY_"))}
    base.update({"MAILY_DEV_DIR": str(state), "COLUMNS": "200"})
    ctl = [sys.executable, str(ROOT / "mailyctl.py")]
    up = subprocess.run(
        [*ctl, "dev", "up", "--port", "0"],
        capture_output=True,
        text=True,
        env=base,
        cwd=ROOT,
        timeout=180,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for needed in ("database: PostgreSQL", "aws: IAM/STS stand-in", "smtp: SMTP stand-in"):
            assert needed in " ".join(up.stdout.split()), up.stdout
        exported = subprocess.run(
            [*ctl, "dev", "env"], capture_output=True, text=True, env=base, cwd=ROOT, timeout=60
        ).stdout
        env = dict(base)
        env.update(dict(w.split("=", 1) for w in shlex.split(exported)[1:]))
        # the guide's `--env=production` must reach this server: production -> here
        doc = yaml.safe_load(Path(env["MAILY_ROTATION_CONFIG"]).read_text())
        doc["environments"]["production"]["vault"] = {
            "addr": env["VAULT_ADDR"],
            "auth_method": "token",
        }
        doc["notify"]["email"]["to"] = ["admins@maily.example"]
        # the dev SMTP stand-in has no TLS: plaintext AUTH must be allowed explicitly
        # (`dev up` should write this itself, as it does for types.smtp.options.tls)
        doc["notify"]["email"]["tls"] = "none"
        cfg = state / "guide-rotation.yaml"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        env["MAILY_ROTATION_CONFIG"] = str(cfg)
        yield DevStack(state, env)
    finally:
        subprocess.run([*ctl, "dev", "down"], capture_output=True, env=base, cwd=ROOT, timeout=120)


def guide_commands() -> list[str]:
    (block,) = code_blocks("Secret Rotation", "bash")
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("./mailyctl.py")]


def test_the_guide_shows_three_commands() -> None:
    assert guide_commands() == [
        "./mailyctl.py secrets rotate --secret-types=jwt,aws",
        "./mailyctl.py secrets rotate --env=production",
        "./mailyctl.py secrets rotate --env=production --notify",
    ]


def run_verbatim(stack: DevStack, command: str) -> subprocess.CompletedProcess[str]:
    # exactly as typed in a shell at the repository root (plus --json to read the result)
    return subprocess.run(  # noqa: S602 - the guide's command line, as an operator types it
        command + " --json",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=stack.env,
        timeout=300,
    )


def test_guide_rotation_commands_verbatim(stack: DevStack) -> None:
    cmd1, cmd2, cmd3 = guide_commands()
    before = asyncio.run(stack.secrets())

    # 1. a specific set of types
    out = run_verbatim(stack, cmd1)
    assert out.returncode == 0, out.stdout + out.stderr
    res = {r["type"]: r for r in json.loads(out.stdout)["results"]}
    assert set(res) == {"jwt", "aws"}
    assert res["jwt"]["status"] == res["aws"]["status"] == "rotated", res
    after1 = asyncio.run(stack.secrets())
    assert after1["config"]["jwt_kid"] != before["config"].get("jwt_kid")
    old_key = before["credentials"]["aws"]["aws_access_key"]
    assert after1["credentials"]["aws"]["aws_access_key"] != old_key

    # 2. every type of an environment
    out = run_verbatim(stack, cmd2)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["env"] == "production"
    res = {r["type"]: r for r in doc["results"]}
    assert set(res) == {"database", "jwt", "aws", "smtp", "api_keys", "redis", "encryption_key"}
    for t in ("database", "jwt", "smtp", "redis", "encryption_key"):
        assert res[t]["status"] == "rotated", (t, res[t]["reason"])
    assert res["api_keys"]["status"] in ("rotated", "action_required"), res["api_keys"]
    # aws was rotated a moment ago: its previous key is in its grace period
    assert res["aws"]["status"] == "skipped" and "grace" in res["aws"]["reason"]
    after2 = asyncio.run(stack.secrets())
    # third-party API keys are never replaced by rotation
    for name in ("stripe", "sendgrid", "openai"):
        assert after2["api-keys"][name] == before["api-keys"][name]

    # 3. ... and tell the administrators
    out = run_verbatim(stack, cmd3)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    email = next(n for n in doc["notifications"] if n["channel"] == "email")
    assert email["ok"], email
    mails = stack.mails()
    assert len(mails) == 1 and "production" in mails[0] and "jwt" in mails[0]

    # no secret value in any command's output or in the email
    final = asyncio.run(stack.secrets())
    texts = [out.stdout + out.stderr, *mails]
    for value in set(_values(before) + _values(after1) + _values(after2) + _values(final)):
        for text in texts:
            assert_absent(value, text, "rotation output or notification")
