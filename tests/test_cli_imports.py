"""`mailyctl` imports only what a command needs, and starts in the project's virtualenv.

Each check runs the real CLI in a child process and looks at the modules it imported
(``sys.modules`` at exit, or ``-X importtime``): names, not timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from maily_secrets.paths import KV2Path
from maily_secrets.rotation.base import Rotator, parse_time, rotator_for
from maily_secrets.rotation.rotators import BUILTIN, DATED_BY_SECRET

from .kit.cli import MAILYCTL, ROOT, mailyctl_env

if TYPE_CHECKING:
    from .conftest import Bao

#: third-party SDKs no command loads unless it talks to their system
SDKS = ("boto3", "botocore", "psycopg", "redis", "jwt", "cryptography")


#: runs mailyctl.py in this interpreter (.venv's) and writes sys.modules to a file at exit
DRIVER = """
import json, runpy, sys
out, *argv = sys.argv[1:]
sys.argv = argv
code = 0
try:
    runpy.run_path(argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""


def imported(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Every module (and its top-level package) in ``sys.modules`` after ``mailyctl.py
    *args`` ran in a child process."""
    out = tmp_path / f"modules-{secrets.token_hex(4)}.json"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), str(MAILYCTL), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    names = set(json.loads(out.read_text())) if out.exists() else set()
    return names | {n.split(".")[0] for n in names}, proc


def test_help_imports_no_command_implementation_nor_sdk(tmp_path: Path) -> None:
    names, proc = imported(["--help"], mailyctl_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Commands:" in proc.stdout and "secrets" in proc.stdout
    loaded = sorted(
        n
        for n in names
        if n in (*SDKS, "aiohttp", "rich", "yaml", "pydantic", "pydantic_settings", "yarl")
        or n.startswith(("maily_secrets.cli.", "maily_secrets.rotation", "maily_secrets.vault"))
    )
    assert loaded == ["maily_secrets.cli.main"], loaded


def test_group_help_imports_that_group_only(tmp_path: Path) -> None:
    names, proc = imported(["secrets", "--help"], mailyctl_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rotate" in proc.stdout and "status" in proc.stdout
    assert "maily_secrets.cli.secrets" in names
    others = {"maily_secrets.cli.dev", "maily_secrets.cli.doctor", "maily_secrets.cli.vault_cmd"}
    assert not names & others, names & others
    assert not names & set(SDKS), names & set(SDKS)


@pytest.fixture(scope="module")
def status_env(
    bao: Bao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], str]]:
    """The default rotation config on a mount of this module's own (the guide's secrets),
    the aws key dated from Vault (no AWS here); the CLI's environment and the mount."""
    from maily_secrets.bootstrap import BootstrapReport, ensure_engines

    mount = asyncio.run(bao.new_kv_mount("cli-imports"))

    async def setup() -> None:
        async with bao.client() as c:
            await ensure_engines(c, BootstrapReport(), kv_mount=mount, samples=True)

    async def teardown() -> None:
        async with bao.client() as c:
            await c.delete(f"sys/mounts/{mount}")

    asyncio.run(setup())
    doc = yaml.safe_load((ROOT / "src/maily_secrets/rotation/default_config.yaml").read_text())
    doc["environments"]["development"]["vault"] = {"kv_mount": mount}
    doc["types"]["aws"].setdefault("options", {})["iam_credentials"] = "default"
    cfg = tmp_path_factory.mktemp("imports") / f"rotation-{secrets.token_hex(4)}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = mailyctl_env(drop=("VAULT_", "BAO_", "MAILY_"))
    env.update(
        VAULT_ADDR=bao.addr,
        VAULT_TOKEN=bao.token,
        VAULT_AUTH_METHOD="token",
        MAILY_ROTATION_CONFIG=str(cfg),
    )
    try:
        yield env, mount
    finally:
        asyncio.run(teardown())


def test_status_json_imports_no_sdk_and_no_rich(
    status_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """Seven types read from Vault: none of their SDKs, and no Rich for a JSON document."""
    names, proc = imported(["secrets", "status", "--json"], status_env[0], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    types = {t["type"] for t in json.loads(proc.stdout)["types"]}
    assert types == set(BUILTIN), types
    unwanted = sorted(names & {*SDKS, "rich"})
    assert unwanted == [], unwanted
    assert "maily_secrets.cli.dev" not in names and "maily_secrets.cli.doctor" not in names


def test_status_table_to_a_pipe_imports_no_rich(
    status_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """The table printed to a pipe is plain aligned lines: Rich is for terminals only."""
    env = {k: v for k, v in status_env[0].items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    names, proc = imported(["secrets", "status"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "secret rotation status: development", lines[:2]
    header = ["type", "secret", "last", "rotated", "age", "interval", "next", "due", "state"]
    assert lines[1].split() == header, lines[1]
    assert len(lines) == 2 + len(BUILTIN), lines
    assert "rich" not in names


def test_status_dates_types_by_their_secret_without_loading_a_rotator(
    bao: Bao, status_env: tuple[dict[str, str], str]
) -> None:
    """The never-rotated types of ``DATED_BY_SECRET`` are due one interval after the
    creation of their secret (config), as ``Rotator.created_at`` says."""
    env, mount = status_env
    proc = subprocess.run(
        [sys.executable, str(MAILYCTL), "secrets", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {t["type"]: t for t in json.loads(proc.stdout)["types"]}

    async def created() -> datetime | None:
        async with bao.client() as c:
            meta = await c.kv.metadata(KV2Path(mount, "config"))
            return parse_time(meta.get("created_time"))

    made = asyncio.run(created())
    assert made is not None
    for t in DATED_BY_SECRET:
        due = datetime.fromisoformat(rows[t]["next_due"].replace("Z", "+00:00"))
        since = due - timedelta(seconds=rows[t]["interval_s"])
        assert abs(since - made) < timedelta(milliseconds=1), (t, since, made)
        assert rows[t]["last_rotated"] is None


def test_rotate_imports_only_the_rotated_types_sdk(
    status_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """A jwt rotation loads PyJWT, none of the other types' SDKs, and no prometheus_client
    when no metrics are asked for (neither Pushgateway nor textfile)."""
    env = status_env[0]
    assert not {"MAILY_PUSHGATEWAY_URL", "MAILY_METRICS_TEXTFILE"} & set(env)
    names, proc = imported(["secrets", "rotate", "--secret-types=jwt", "--json"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["status"] for r in json.loads(proc.stdout)["results"]] == ["rotated"]
    assert "jwt" in names
    unwanted = sorted(names & {"boto3", "botocore", "psycopg", "redis", "prometheus_client"})
    assert unwanted == [], unwanted


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_dated_by_secret_lists_exactly_the_rotators_keeping_the_default(name: str) -> None:
    """``DATED_BY_SECRET`` is what lets a schedule skip importing a rotator: it must name
    every built-in rotator that keeps ``Rotator.created_at`` and no other."""
    keeps_default = type(rotator_for(name)).created_at is Rotator.created_at
    assert keeps_default == (name in DATED_BY_SECRET), name


def test_script_starts_the_virtualenv_without_importing_first() -> None:
    """Another interpreter running mailyctl.py execs .venv's before importing anything of
    the package (its own imports, printed by -X importtime, hold none of it)."""
    other = os.path.realpath(sys.executable)  # the base interpreter, outside the venv
    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()
    proc = subprocess.run(
        [other, "-X", "importtime", str(MAILYCTL), "--version"],
        capture_output=True,
        text=True,
        env=mailyctl_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("mailyctl (maily-secrets) "), proc.stdout
    first = [ln for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    assert first, "the first interpreter printed no imports"
    assert not [ln for ln in first if "maily_secrets" in ln or "typer" in ln], first


def test_script_run_as_a_program_needs_no_python_on_path() -> None:
    """./mailyctl.py is a shell script first: it starts .venv's interpreter itself."""
    env = mailyctl_env(PATH="/nonexistent")
    proc = subprocess.run(
        [str(MAILYCTL), "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mailyctl (maily-secrets) "), proc.stdout


def test_cli_process_collects_cycles_rarely_but_still_collects(tmp_path: Path) -> None:
    """``mailyctl.py`` raises the cyclic GC's thresholds before importing the CLI (a short
    process whose heap is long-lived: each collection cost and freed next to nothing), and
    leaves it on, so that a long command still frees its cycles."""
    code = (
        "import gc, runpy, sys\n"
        "sys.argv = [sys.argv[1], '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('gc:', gc.isenabled(), gc.get_threshold())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(MAILYCTL)],
        capture_output=True,
        text=True,
        env=mailyctl_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from maily_secrets.cli.main import CLI_GC_THRESHOLDS

    assert proc.stdout.rstrip().endswith(f"gc: True {CLI_GC_THRESHOLDS}"), proc.stdout[-300:]
