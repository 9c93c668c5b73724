"""Dev tooling apart: ``maily_secrets.dev`` (dev server, stand-ins, demo) is never
imported by the runtime.

A service that imports the library (the guide's ``apps.api.services.vault_service``,
``maily_secrets``, ``maily_secrets.service``) loads none of it; and no runtime module
imports it, except ``cli/dev.py`` (``mailyctl dev``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "maily_secrets"
# the only runtime module that may import the dev tooling: `mailyctl dev` drives it
ALLOWED = {PACKAGE / "cli" / "dev.py"}


def test_importing_the_library_loads_no_dev_module() -> None:
    code = (
        "import apps.api.services.vault_service, maily_secrets, maily_secrets.service, sys; "
        "dev = sorted(m for m in sys.modules if m.startswith('maily_secrets.dev')); "
        "assert not dev, dev"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", "."])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def _imported(path: Path, top: Path) -> set[str]:
    """Every module name ``path`` (importable from ``top``) imports, wherever the
    statement is: relative imports resolved, ``from pkg import module`` included."""
    package = list(path.relative_to(top).parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_runtime_module_imports_the_dev_package() -> None:
    runtime = [
        (p, top)
        for top, tree in ((ROOT / "src", PACKAGE), (ROOT, ROOT / "apps"))
        for p in sorted(tree.rglob("*.py"))
        if PACKAGE / "dev" not in p.parents and p not in ALLOWED
    ]
    assert len(runtime) > 30  # the scan really saw the library
    offenders = {
        str(p.relative_to(ROOT)): dev
        for p, top in runtime
        if (
            dev := sorted(
                n
                for n in _imported(p, top)
                if n == "maily_secrets.dev" or n.startswith("maily_secrets.dev.")
            )
        )
    }
    assert offenders == {}
