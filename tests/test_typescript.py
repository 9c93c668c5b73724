"""The TypeScript client `@maily/services/vault` (packages/services) against the real OpenBao.

The Node test suite (`node --test packages/services/test/`) runs against the session's
dev server (token via the environment, never argv); the interop tests here check that
the Python service and the TypeScript client read and encrypt the same things.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .rotation_env import mailyctl_argv, make_rotation_env

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packages" / "services"
NODE = shutil.which("node")
NPM = shutil.which("npm")


@pytest.fixture(autouse=True)
def _node_is_installed() -> None:
    """The TypeScript client is tested, never skipped: no node is a failure (make installs it)."""
    if NODE is None or NPM is None:
        pytest.fail("node/npm not found: `make test` needs them (the TypeScript client's tests)")


def _newest_mtime(d: Path) -> float:
    return max((p.stat().st_mtime for p in d.rglob("*") if p.is_file()), default=0.0)


@pytest.fixture(scope="session")
def ts_built() -> Path:
    """`npm ci` (only when node_modules is missing) and `tsc` (only when dist is stale)."""
    assert NPM is not None
    if (
        not (ROOT / "node_modules" / "typescript").is_dir()
        or not (ROOT / "node_modules" / "@maily" / "services").exists()
    ):
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, timeout=600)
    dist = PKG / "dist" / "vault" / "index.js"
    inputs = max(
        _newest_mtime(PKG / "src"),
        (PKG / "tsconfig.json").stat().st_mtime,
        (PKG / "package.json").stat().st_mtime,
    )
    if not dist.exists() or _newest_mtime(PKG / "dist") < inputs:
        subprocess.run(
            [NPM, "run", "build", "-w", "@maily/services"], cwd=ROOT, check=True, timeout=600
        )
    return PKG


def node_env(bao: Bao, home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "BAO_", "MAILY_SECRETS_", "NODE_OPTIONS"))
    }
    env.update({"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.token, "HOME": str(home)})
    env.update(extra)
    return env


def run_interop(bao: Bao, home: Path, cmd: dict[str, Any], **extra: str) -> dict[str, Any]:
    assert NODE is not None
    out = subprocess.run(
        [NODE, str(PKG / "scripts" / "interop.mjs")],
        input=json.dumps(cmd),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=node_env(bao, home, **extra),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout)
    assert "error" not in result, result
    return result


@pytest.fixture
async def approle(root: VaultClient) -> dict[str, str]:
    """An AppRole that may read maily/* and use transit; short token TTL to see renewals."""
    auths = (await root.read("sys/auth")).data or {}
    if "approle/" not in auths:
        await root.write("sys/auth/approle", {"type": "approle"})
    await root.write(
        "sys/policies/acl/ts-client",
        {
            "policy": 'path "maily/*" { capabilities = ["read", "list"] }\n'
            'path "transit/*" { capabilities = ["update"] }\n'
        },
    )
    role = "ts-client-" + uuid.uuid4().hex[:6]
    await root.write(
        f"auth/approle/role/{role}",
        {"token_policies": ["ts-client"], "token_ttl": "3s", "token_max_ttl": "60s"},
    )
    role_id = ((await root.read(f"auth/approle/role/{role}/role-id")).data or {})["role_id"]
    secret_id = ((await root.write(f"auth/approle/role/{role}/secret-id", {})).data or {})[
        "secret_id"
    ]
    return {"role_id": role_id, "secret_id": secret_id}


def test_node_suite(bao: Bao, ts_built: Path, approle: dict[str, str], tmp_path: Path) -> None:
    """`node --test` over packages/services/test/ against the session's OpenBao."""
    assert NODE is not None
    env = node_env(
        bao,
        tmp_path / "home",
        MAILY_TS_TEST_ROLE_ID=approle["role_id"],
        MAILY_TS_TEST_SECRET_ID=approle["secret_id"],
        MAILY_TS_TEST_GUIDE=str(ROOT / "docs" / "vault-integration-guide.md"),
    )
    out = subprocess.run(
        [NODE, "--test", "--test-concurrency=1", "--test-reporter=tap", "test/"],
        capture_output=True,
        text=True,
        cwd=PKG,
        env=env,
        timeout=300,
    )
    counts = tap_summary(out.stdout)
    print(counts)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert counts.get("fail") == 0 and counts.get("cancelled", 0) == 0, counts
    # A test skipped because the environment was not set up is a test that did not run.
    skipped = re.findall(
        r"^(?:ok|not ok) \d+ - (.*?) # (?:SKIP|TODO)\b.*$", out.stdout, re.M | re.I
    )
    assert counts.get("skipped", counts.get("skip")) == 0 and counts.get("todo") == 0, (
        counts,
        skipped,
    )
    assert counts.get("pass", 0) >= MIN_NODE_TESTS, counts
    ran = set(re.findall(r"^ok \d+ - (.*)$", out.stdout, re.M))
    for name in EXPECTED_NODE_TESTS:
        assert any(r.startswith(name) for r in ran), f"{name!r} did not run: {sorted(ran)}"


# The Node suite must contain these (a file that failed to load, or was renamed, shows here).
EXPECTED_NODE_TESTS = (
    "conformance (a): path validity",
    "conformance (c): the retry matrix",
    "conformance (e): the redirect rule",
    "a 307 to another origin is refused",
    "a revoked token is AuthFailed",
    "TLS: https -> http is refused",
    "mTLS: cert auth logs in with the client certificate",
)
MIN_NODE_TESTS = 40


def tap_summary(stdout: str) -> dict[str, int]:
    """The counts of `node --test --test-reporter=tap`'s closing summary (`# pass 12`)."""
    counts = {k: int(v) for k, v in re.findall(r"^# (\w+) (\d+)$", stdout, re.M)}
    assert "pass" in counts and "fail" in counts, "no TAP summary in the output:\n" + stdout[-3000:]
    return counts


def test_tap_summary_parsing() -> None:
    sample = (
        "ok 1 - a\nok 2 - b # SKIP no env\n1..2\n"
        "# tests 2\n# pass 1\n# fail 0\n# skipped 1\n# todo 0\n"
    )
    assert tap_summary(sample) == {"tests": 2, "pass": 1, "fail": 0, "skipped": 1, "todo": 0}


async def test_python_encrypts_typescript_decrypts(
    bao: Bao, ts_built: Path, tmp_path: Path
) -> None:
    text = "interop ✓ " + uuid.uuid4().hex
    raw = os.urandom(48)
    async with VaultService(bao.settings()) as svc:
        ct_text = await svc.encrypt_data("maily-enc-key", text)
        ct_raw = await svc.encrypt_data("maily-enc-key", raw)
    got = run_interop(
        bao, tmp_path, {"op": "decrypt", "key": "maily-enc-key", "ciphertext": ct_text}
    )
    assert got["plaintext"] == text
    got = run_interop(
        bao, tmp_path, {"op": "decrypt-bytes", "key": "maily-enc-key", "ciphertext": ct_raw}
    )
    assert base64.b64decode(got["b64"]) == raw


async def test_typescript_encrypts_python_decrypts(
    bao: Bao, ts_built: Path, tmp_path: Path
) -> None:
    text = "from node ✓ " + uuid.uuid4().hex
    raw = os.urandom(33)
    ct_text = run_interop(
        bao, tmp_path, {"op": "encrypt", "key": "maily-enc-key", "plaintext": text}
    )
    ct_raw = run_interop(
        bao,
        tmp_path,
        {"op": "encrypt-bytes", "key": "maily-enc-key", "b64": base64.b64encode(raw).decode()},
    )
    assert ct_text["ciphertext"].startswith("vault:v")
    async with VaultService(bao.settings()) as svc:
        assert await svc.decrypt_data("maily-enc-key", ct_text["ciphertext"]) == text
        assert await svc.decrypt_data("maily-enc-key", ct_raw["ciphertext"], as_bytes=True) == raw


async def test_both_clients_see_a_mailyctl_rotation(
    bao: Bao, root: VaultClient, ts_built: Path, tmp_path: Path
) -> None:
    renv = await make_rotation_env(
        bao, root, tmp_path, types={"jwt": {"secret": "config", "grace": "1h"}}
    )
    ts_env = {"MAILY_SECRETS_MOUNT": renv.mount}
    before_ts = run_interop(bao, tmp_path, {"op": "config"}, **ts_env)
    async with VaultService(bao.settings(kv_mount=renv.mount)) as svc:
        before_py = await svc.get_config()
    assert before_ts["config"] == before_py

    out = subprocess.run(
        mailyctl_argv("secrets", "rotate", "--secret-types=jwt", "--json", "--yes"),
        capture_output=True,
        text=True,
        env=renv.env(),
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["results"][0]["status"] == "rotated"

    after_ts = run_interop(bao, tmp_path, {"op": "config"}, **ts_env)
    async with VaultService(bao.settings(kv_mount=renv.mount)) as svc:
        after_py = await svc.get_config()
        version_py = await svc.get_secret_version(f"{renv.mount}/data/config")
    assert after_py.get("jwt_kid"), "the rotation set a key id"
    assert after_py["jwt_kid"] != before_py.get("jwt_kid")
    assert after_py["jwt_secret"] != before_py["jwt_secret"]
    assert after_ts["config"] == after_py  # same new values, jwt_kid and jwt_secret included
    assert after_ts["version"] == version_py and version_py > before_ts["version"]
