"""How the operator CLI was invoked, for hints that name a command the reader can paste.

``mailyctl`` when run as the installed entry point (or from any other program, e.g. the
CronJob or a service that rotates in-process), ``./mailyctl.py`` when run as the script
at the repository root. Anything that prints a command (CLI hints, rotation messages
such as the api_keys rotator's "store it with ...") asks :func:`command`, so no message
names a command that does not exist where it is read. Imports nothing of the package.
"""

from __future__ import annotations

import os
import sys

ENTRY_POINT = "mailyctl"
SCRIPT = "./mailyctl.py"


def program(argv0: str | None = None) -> str:
    """``./mailyctl.py`` when ``argv0`` (default ``sys.argv[0]``) is the script, else
    ``mailyctl``."""
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    return SCRIPT if name == "mailyctl.py" else ENTRY_POINT


def command(*words: str) -> str:
    """The command line ``words`` as the user would type it: ``command("dev", "up")`` is
    ``mailyctl dev up`` or ``./mailyctl.py dev up``."""
    return " ".join((program(), *words))
