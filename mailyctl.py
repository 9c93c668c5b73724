#!/bin/sh
""":"
# Run as a program (./mailyctl.py), this file is a POSIX shell script first: it starts
# the project's virtualenv directly, so no other interpreter starts before it (an
# `env python3` shebang costs a whole interpreter start, and more through a version
# manager's shim: 130 ms with pyenv here). From here on the shell never reads it.
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
if [ -x "$here/.venv/bin/python" ]; then exec "$here/.venv/bin/python" "$0" "$@"; fi
exec python3 "$0" "$@"
":"""

# Maily operator CLI, as the integration guide calls it: ``./mailyctl.py secrets rotate ...``.
#
# Runs from a checkout without installing anything by hand: an interpreter that is not
# the project's virtualenv (``.venv``, made by ``make setup``) re-executes this file
# with it before importing anything (``python3 mailyctl.py ...`` works too).

import gc
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")


def main() -> None:
    venv_python = os.path.join(VENV, "bin", "python")
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(VENV)
    if not in_venv and os.access(venv_python, os.X_OK):
        os.execv(venv_python, [venv_python, *sys.argv])  # noqa: S606
    gc.set_threshold(50_000, 20, 20)  # rare collections: see maily_secrets.cli.main.run
    sys.path[:0] = [os.path.join(ROOT, "src"), ROOT]
    try:
        from maily_secrets.cli.main import run
    except ImportError as exc:
        sys.stderr.write(f"mailyctl: dependencies missing ({exc.name}); run `make setup` first\n")
        sys.exit(1)
    run()


if __name__ == "__main__":
    main()
