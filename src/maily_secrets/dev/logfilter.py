"""The dev server's log filter: copies bao's output without its root token and unseal key.

Run as a script of its own (``python -I logfilter.py filter-log ...``, started by
:class:`~maily_secrets.dev.server.DevServer`), so it imports nothing of the package.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO


def write_private(path: Path, text: str) -> None:
    """Write atomically, mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_SECRET_LINE = re.compile(rb"^(?P<lead>\s*)(?P<what>Root Token|Unseal Key)s?:\s*(?P<value>\S+)")


def filter_log(src: BinaryIO, log: Path, token_file: Path, unseal_file: Path) -> None:
    """Copy the dev server's output to ``log`` without its root token and unseal key.

    The ``Root Token:`` and ``Unseal Key:`` lines are replaced by a pointer to the
    0600 file that holds the value (the unseal key is written to ``unseal_file``);
    any later occurrence of either value is masked as well. Runs until EOF.
    """
    try:
        token = token_file.read_bytes().strip()
    except OSError:
        token = b""
    known = [token] if token else []
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for raw in iter(src.readline, b""):
            line = raw
            m = _SECRET_LINE.match(line)
            if m:
                value = m.group("value")
                where = token_file
                if m.group("what") == b"Unseal Key":
                    where = unseal_file
                    write_private(unseal_file, value.decode("utf-8", "replace") + "\n")
                if value not in known:
                    known.append(value)
                line = m.group("lead") + m.group("what") + f": (redacted; in {where})\n".encode()
            for secret in known:
                line = line.replace(secret, b"(redacted)")
            os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="logfilter.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("filter-log", help="copy stdin to --log without the dev secrets")
    f.add_argument("--log", type=Path, required=True)
    f.add_argument("--token-file", type=Path, required=True)
    f.add_argument("--unseal-key-file", type=Path, required=True)
    args = p.parse_args(argv)
    # a terminal's Ctrl-C or a SIGTERM to bao's group must not cut bao's output short
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    filter_log(sys.stdin.buffer, args.log, args.token_file, args.unseal_key_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
