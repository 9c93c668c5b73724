#!/usr/bin/env python3
"""Maily operator CLI, as the integration guide calls it: ``./mailyctl.py secrets rotate ...``.

Runs from a checkout without installing anything by hand: when the package or its
dependencies are not importable by this interpreter, it re-executes itself with
the project's virtualenv (``.venv``, made by ``make setup``).
"""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

try:
    sys.path[:0] = [os.path.join(ROOT, "src"), ROOT]
    from maily_secrets.cli.main import run
except ImportError:
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(ROOT, ".venv"))
    if os.path.exists(venv_python) and not in_venv:
        os.execv(venv_python, [venv_python, *sys.argv])  # noqa: S606
    sys.stderr.write("mailyctl: dependencies missing; run `make setup` first\n")
    sys.exit(1)

if __name__ == "__main__":
    run()
