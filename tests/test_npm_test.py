"""`npm test -w @maily/services` as a JS developer runs it: no Vault in the environment.

packages/services/scripts/test.mjs builds first, then starts an OpenBao dev server of its
own (the same `bao` binary), bootstraps what the Node suite needs and stops it afterwards;
with no `bao` anywhere it says so in one line.

Both tests run in a fresh workspace of their own (the root package.json, a copy of
packages/services, the guide and tests/conformance, node_modules holding only typescript
and @types/node), so that `@maily/services` resolves to the package under test and not
to another checkout a shared node_modules may link to.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from maily_secrets.dev.server import bao_binary

from .test_typescript import EXPECTED_NODE_TESTS, MIN_NODE_TESTS, tap_summary

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packages" / "services"
NPM = shutil.which("npm")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    if NPM is None:
        pytest.fail("npm not found: `make test` needs node and npm")
    ws = tmp_path / "ws"
    (ws / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "package.json", ws / "package.json")
    shutil.copy(ROOT / "docs" / "vault-integration-guide.md", ws / "docs")
    # the conformance cases both clients share (read by test/conformance.test.mjs)
    shutil.copytree(ROOT / "tests" / "conformance", ws / "tests" / "conformance")
    shutil.copytree(
        PKG, ws / "packages" / "services", ignore=shutil.ignore_patterns("dist", ".guide-snippet")
    )
    nm = ws / "node_modules"
    (nm / "@maily").mkdir(parents=True)
    for dep in ("typescript", "@types", "undici-types"):
        src = (ROOT / "node_modules" / dep).resolve()
        if src.exists():
            (nm / dep).symlink_to(src)
    (nm / "@maily" / "services").symlink_to(Path("..") / ".." / "packages" / "services")
    return ws


def npm_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "BAO_", "MAILY_", "NODE_OPTIONS", "npm_"))
    }
    env["HOME"] = str(home)
    env["npm_config_update_notifier"] = "false"  # no "new npm version" notice
    env.update(extra)
    return env


def run_npm_test(ws: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert NPM is not None
    p = subprocess.Popen(
        [NPM, "test", "-w", "@maily/services", "--", "--test-reporter=tap"],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_npm_test_builds_starts_its_own_openbao_and_passes(workspace: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"  # made by conftest's _clean_env
    # only MAILY_BAO_BINARY says where bao is: the copy has no .venv beside it
    out = run_npm_test(workspace, npm_env(home, MAILY_BAO_BINARY=bao_binary()))
    failed = re.findall(r"^not ok .*?(?=^(?:ok|not ok|# Subtest) |\Z)", out.stdout, re.M | re.S)
    assert out.returncode == 0, "".join(failed)[-8000:] + out.stderr[-3000:]
    # it built first: the suite imported the package's own dist
    assert (workspace / "packages" / "services" / "dist" / "vault" / "index.js").is_file()
    assert "OpenBao dev server of this run at http://127.0.0.1:" in out.stderr
    counts = tap_summary(out.stdout)
    assert counts["fail"] == 0 and counts.get("cancelled", 0) == 0, counts
    assert counts.get("skipped", 0) == 0 and counts.get("todo", 0) == 0, counts
    assert counts["pass"] >= MIN_NODE_TESTS, counts
    for name in (*EXPECTED_NODE_TESTS, "AppRole login (auto-detected)"):
        assert f" - {name}" in out.stdout, name
    # the dev server's root token and unseal key went nowhere
    assert "Root Token" not in out.stdout + out.stderr
    assert "Unseal Key" not in out.stdout + out.stderr
    # and it was stopped: its port no longer answers
    m = re.search(r"at http://127\.0\.0\.1:(\d+) ", out.stderr)
    assert m
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5).close()


def test_npm_test_without_bao_says_so_in_one_line(workspace: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"  # made by conftest's _clean_env
    missing = tmp_path / "no-such-dir" / "bao"
    out = run_npm_test(workspace, npm_env(home, MAILY_BAO_BINARY=str(missing)))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ours = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip() and not line.startswith(">")  # npm's own "> pkg test" header
    ]
    assert len(ours) == 1, ours
    assert ours[0].startswith("npm test: skipped: no VAULT_ADDR and no bao binary")
    assert str(missing) in ours[0]
    # the build still ran before the decision to skip
    assert (workspace / "packages" / "services" / "dist" / "vault" / "index.js").is_file()
