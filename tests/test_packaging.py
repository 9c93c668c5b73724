"""maily-secrets as a library other repositories install: the built wheel, installed into a
fresh virtual environment, runs ``mailyctl`` and imports ``vault_service`` from a directory
outside the checkout, reads its built-in rotation config and bootstraps a bare OpenBao with
the policies and auth roles it ships.

The wheel is built once per module from a copy of the working tree (``pyproject.toml``,
``README.md``, ``src/``) with the ordinary isolated build; the fresh venv gets the wheel
and its dependencies from the package index, pinned by ``constraints.txt``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from maily_secrets._version import __version__
from maily_secrets.dev.server import DevServer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "maily_secrets"
#: the files that are not Python and must be in the wheel (package-relative)
DATA = (
    "py.typed",
    "rotation/default_config.yaml",
    "vault_setup/policies/maily.hcl",
    "vault_setup/policies/maily-rotator.hcl",
    "vault_setup/auth/kubernetes-roles.json",
    "vault_setup/auth/approle-roles.json",
)
_HOME = os.environ.get("HOME", "/root")  # before the autouse fixture swaps it: pip's cache


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a working directory with nothing of the checkout in it

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def mailyctl(self) -> Path:
        return self.venv / "bin" / "mailyctl"


def _env(**extra: str) -> dict[str, str]:
    """An environment a user of the installed package would have: no PYTHONPATH into the
    checkout, no active venv, no Vault settings of the test run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        and not k.startswith(("VAULT_", "BAO_", "MAILY_"))
    }
    env.update({"HOME": _HOME, "NO_COLOR": "1", "COLUMNS": "200", **extra})
    return env


def _run(argv: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Built and installed once for the module; removed after it (a venv is ~200 MB)."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "source"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        PACKAGE,
        src / "src" / "maily_secrets",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    wheels = base / "wheels"
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", wheels, src], cwd=base)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = wheels.glob("maily_secrets-*.whl")

    venv = base / "fresh"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    assert made.returncode == 0, made.stderr
    # this venv's pip installs into the fresh one (--python): no pip bootstrap there
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install"]
    got = _run([*pip, "--quiet", "--no-compile", "-c", ROOT / "constraints.txt", wheel], cwd=base)
    assert got.returncode == 0, got.stderr[-3000:]
    outside = base / "elsewhere"
    outside.mkdir()
    assert ROOT not in outside.parents
    try:
        yield Installed(wheel, venv, outside)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_wheel_holds_py_typed_the_rotation_config_and_the_vault_policies(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        names = set(z.namelist())
        for rel in DATA:
            assert f"maily_secrets/{rel}" in names, rel
            assert z.read(f"maily_secrets/{rel}") == (PACKAGE / rel).read_bytes(), rel
        metadata = z.read(f"maily_secrets-{__version__}.dist-info/METADATA").decode()
    assert installed.wheel.name.startswith(f"maily_secrets-{__version__}-")
    assert f"\nVersion: {__version__}\n" in metadata
    assert "Requires-Dist: aiohttp<4,>=3.10" in metadata  # a range, not a pin
    pinned = [
        ln
        for ln in metadata.splitlines()
        if ln.startswith("Requires-Dist:") and "==" in ln.partition(";")[0]
    ]
    assert pinned == []
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    for rel in DATA:
        assert (site / "maily_secrets" / rel).is_file(), rel


def test_installed_mailyctl_prints_its_version_and_help_outside_the_checkout(
    installed: Installed,
) -> None:
    version = _run([installed.mailyctl, "--version"], cwd=installed.outside)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"mailyctl (maily-secrets) {__version__}"
    helped = _run([installed.mailyctl, "--help"], cwd=installed.outside)
    assert helped.returncode == 0, helped.stderr
    for command in ("secrets", "vault", "doctor", "dev", "--version"):
        assert command in helped.stdout


def test_installed_secrets_status_reads_the_built_in_rotation_config(
    installed: Installed,
) -> None:
    """The issue's first symptom: "cannot read rotation config None". Now the built-in
    config loads, and the command gets as far as asking for credentials."""
    proc = _run(
        [installed.mailyctl, "secrets", "status"],
        cwd=installed.outside,
        VAULT_ADDR="http://127.0.0.1:9",
    )
    assert "rotation config" not in proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no Vault credentials" in proc.stderr


def test_installed_package_imports_vault_service_without_io_outside_the_checkout(
    installed: Installed,
) -> None:
    code = """
import importlib.metadata, json, pathlib, sys
import maily_secrets
from maily_secrets import VaultService, vault_service
from maily_secrets import vault_service as again
from maily_secrets.policies import load_auth_roles, load_policies
from maily_secrets.rotation.config import RotationConfig

assert isinstance(vault_service, VaultService) and vault_service is again
assert vault_service._client is None and vault_service._cache is None  # nothing done yet
pkg = pathlib.Path(maily_secrets.__file__).parent
print(json.dumps({
    "file": str(pkg),
    "version": maily_secrets.__version__,
    "metadata_version": importlib.metadata.version("maily-secrets"),
    "py_typed": (pkg / "py.typed").is_file(),
    "rotation_source": RotationConfig.load().source,
    "policies": sorted(load_policies()),
    "kubernetes_roles": sorted(load_auth_roles("kubernetes").roles),
    "apps": [m for m in sys.modules if m == "apps" or m.startswith("apps.")],
}))
"""
    proc = _run([installed.python, "-c", code], cwd=installed.outside)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert Path(got["file"]).is_relative_to(installed.venv)
    assert got["version"] == got["metadata_version"] == __version__
    assert got["py_typed"] is True
    assert got["rotation_source"] == "default_config.yaml (built in)"
    assert got["policies"] == ["maily", "maily-rotator"]
    want_roles = json.loads((PACKAGE / "vault_setup/auth/kubernetes-roles.json").read_text())
    assert got["kubernetes_roles"] == sorted(want_roles["roles"])
    assert got["apps"] == []


@pytest.fixture
def bare_bao(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A dev server of the test's own with nothing of Maily on it: (addr, root token)."""
    server = DevServer(tmp_path / "bare-bao")
    info, _ = server.start(port=0)
    try:
        yield info.addr, info.token()
    finally:
        server.stop()


def test_installed_vault_bootstrap_applies_the_packaged_policies_outside_the_checkout(
    installed: Installed, bare_bao: tuple[str, str]
) -> None:
    addr, token = bare_bao
    argv: list[str | Path] = [installed.mailyctl, "vault", "bootstrap", "--no-samples", "--json"]
    first = _run(argv, cwd=installed.outside, VAULT_ADDR=addr, VAULT_TOKEN=token)
    assert first.returncode == 0, first.stderr
    assert token not in first.stdout + first.stderr
    report = json.loads(first.stdout)
    want = {"mount maily/ (kv v2)", "transit key maily-enc-key", "policy maily"}
    assert want | {"policy maily-rotator"} <= set(report["created"])

    again = _run(argv, cwd=installed.outside, VAULT_ADDR=addr, VAULT_TOKEN=token)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["created"] == []  # idempotent

    # what the server now holds is the packaged text, read back with the installed package
    code = """
import asyncio, json, sys
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

async def main():
    async with VaultClient(VaultSettings()) as c:
        out = {}
        for name in ("maily", "maily-rotator"):
            out[name] = (await c.read(f"sys/policies/acl/{name}")).data["policy"]
        print(json.dumps(out))

asyncio.run(main())
"""
    read = _run(
        [installed.python, "-c", code], installed.outside, VAULT_ADDR=addr, VAULT_TOKEN=token
    )
    assert read.returncode == 0, read.stderr
    on_server = json.loads(read.stdout)
    for name, text in on_server.items():
        packaged = (PACKAGE / "vault_setup" / "policies" / f"{name}.hcl").read_text()
        assert text.strip() == packaged.strip(), name


def test_deploy_vault_policies_and_auth_are_the_packaged_files() -> None:
    """One copy: the repository's deploy/vault/{policies,auth} are links into the package."""
    for sub in ("policies", "auth"):
        link = ROOT / "deploy" / "vault" / sub
        assert link.is_symlink(), link
        assert link.resolve() == (PACKAGE / "vault_setup" / sub).resolve()
        assert sorted(p.name for p in link.iterdir()) == sorted(
            p.name for p in (PACKAGE / "vault_setup" / sub).iterdir()
        )


def test_dependencies_are_ranges_and_constraints_pin_every_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    assert reqs and not [r for r in reqs if "==" in r]
    assert "version" in project["dynamic"] and "version" not in project
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, line
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for req in reqs:
        name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, req
    for needed in ("build", "fastapi", "httpx"):
        assert needed in pins
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'" in (
        makefile
    )


def test_the_guide_import_path_is_the_package_service() -> None:
    import maily_secrets
    from apps.api.services.vault_service import vault_service

    assert vault_service is maily_secrets.vault_service


def test_a_typed_consumer_of_the_installed_package_passes_mypy_strict(
    installed: Installed,
) -> None:
    """py.typed: mypy (ours, run against the fresh venv's site-packages) types
    ``vault_service`` as the VaultService, not Any, and checks calls against it."""
    app = installed.outside / "consumer.py"
    app.write_text(
        "from typing import Any\n\n"
        "from maily_secrets import VaultService, vault_service\n\n\n"
        "async def settings() -> dict[str, Any]:\n"
        "    service: VaultService = vault_service\n"
        "    return await service.get_config()\n\n\n"
        "reveal_type(vault_service)\n"
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    proc = _run(
        [*mypy, "--python-executable", installed.python, app],
        cwd=installed.outside,
        MYPY_CACHE_DIR=str(installed.outside / ".mypy_cache"),
    )
    assert 'Revealed type is "maily_secrets.service.VaultService"' in proc.stdout, proc.stdout
    assert "error" not in proc.stdout.replace("Found 0 errors", ""), proc.stdout


def test_deploy_dir_points_bootstrap_at_an_operators_own_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maily_secrets.policies import PACKAGED_DIR, auth_dir, load_policies, policy_dir

    assert policy_dir() == PACKAGED_DIR / "policies" and auth_dir() == PACKAGED_DIR / "auth"
    own = tmp_path / "ops"
    (own / "vault" / "policies").mkdir(parents=True)
    (own / "vault" / "policies" / "team.hcl").write_text(
        'path "team/*" { capabilities = ["read"] }'
    )
    assert list(load_policies(policy_dir(own))) == ["team"]  # --deploy-dir
    monkeypatch.setenv("MAILY_DEPLOY_DIR", str(own))
    assert list(load_policies()) == ["team"] and auth_dir() == own / "vault" / "auth"
