"""Running ``./mailyctl.py`` as a user would: a child process with a clean environment.

env = mailyctl_env(MAILY_DEV_DIR=str(state))     # no VAULT_*/BAO_* of the developer's shell
proc = run_mailyctl("dev", "status", env=env, check=True)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAILYCTL = ROOT / "mailyctl.py"


def mailyctl_argv(*args: str) -> list[str]:
    return [sys.executable, str(MAILYCTL), *args]


def mailyctl_env(drop: Iterable[str] = ("VAULT_", "BAO_"), **extra: str) -> dict[str, str]:
    """Our environment without the variables starting with ``drop``, a wide terminal
    (``COLUMNS=200``: tables do not wrap) and ``extra``."""
    prefixes = tuple(drop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_mailyctl(
    *args: str,
    env: Mapping[str, str],
    timeout: float = 60,
    stdin: str | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``mailyctl.py *args`` from the repository root; ``check``: a non-zero exit fails the
    test with both outputs."""
    proc = subprocess.run(
        mailyctl_argv(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=ROOT,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mailyctl {args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
