"""Server processes a test starts itself (``bao server``, ``bao agent`` ...), and stops.

with running([bao, "server", "-dev", ...], tmp / "server.log") as proc:
    ...                                  # SIGTERM on exit, SIGKILL after 10 s

proc = spawn_logged(argv, node_dir / "server.log", cwd=node_dir)
stop_processes([n.proc for n in nodes])  # every one at once, one deadline
kill_process(proc)                       # SIGKILL (a crash), reaped
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

Proc = subprocess.Popen[bytes]


def spawn_logged(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    clean_env: bool = True,
) -> Proc:
    """Start ``argv`` with stdout and stderr appended to ``log`` (0600: a server's log can
    hold a root token), stdin closed, in a session of its own.

    Its environment is ours plus ``env``; without ``VAULT_*``/``BAO_*`` when ``clean_env``.
    """
    base = dict(os.environ)
    if clean_env:
        base = {k: v for k, v in base.items() if not k.startswith(("VAULT_", "BAO_"))}
    base.update(env or {})
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=base,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(fd)


def stop_processes(procs: Iterable[Proc | None], timeout: float = 10.0) -> None:
    """SIGTERM every live one, SIGKILL those still alive after ``timeout``; all reaped."""
    live = [p for p in procs if p is not None]
    for p in live:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=5)


def kill_process(proc: Proc | None) -> None:
    """SIGKILL (no graceful shutdown, like a crash or an OOM kill) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    clean_env: bool = True,
    stop_timeout: float = 10.0,
) -> Iterator[Proc]:
    """:func:`spawn_logged` for the ``with`` block, then :func:`stop_processes`."""
    proc = spawn_logged(argv, log, cwd=cwd, env=env, clean_env=clean_env)
    try:
        yield proc
    finally:
        stop_processes([proc], stop_timeout)
