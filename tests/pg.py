"""A private PostgreSQL cluster for tests, with REAL password authentication.

The machine's own PostgreSQL accepts any password (trust), so it cannot show
that a password works, or that a revoked or wrong one does not.  ``PgServer``
runs a throw-away cluster of the test session's own:

* ``initdb --auth=scram-sha-256`` in a fresh temporary directory owned by the
  ``postgres`` OS user (``runuser`` when we are root), the superuser password
  handed over in a mode-0600 pwfile that is deleted right after (never argv);
* TCP on 127.0.0.1 only, on a free port; the unix socket inside the temp dir;
* ``pg_hba.conf`` that asks every connection, local or TCP, for a SCRAM password;
* started with ``pg_ctl -w`` and checked with a real SCRAM login; stopped with
  ``pg_ctl -m fast`` at teardown (then ``immediate``, then SIGKILL), all with
  bounded waits, and the directory removed.

Use the session fixture ``pg`` (import it into the test module:
``from tests.pg import pg``) or ``PgServer`` directly::

    with PgServer.start() as server:
        assert server.try_login("postgres", server.password)
        assert not server.try_login("postgres", "wrong")
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

# SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification
# (e.g. "role is not permitted to log in"). With SCRAM, PostgreSQL answers
# "password authentication failed" for an unknown role too, and for an expired one.
AUTH_SQLSTATES = frozenset({"28P01", "28000"})
_AUTH_MARKERS = (
    "password authentication failed",
    "is not permitted to log in",
    "authentication failed",
)
_OS_USER = "postgres"


class PgError(RuntimeError):
    """The private cluster could not be created, started or stopped."""


class LoginError(RuntimeError):
    """A login attempt failed for a reason other than the credentials."""


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` (or ``$PG_BINDIR``)."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        which = shutil.which("initdb")
        if which:
            return Path(which).parent
        raise PgError("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin")
    return found[-1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_auth_failure(exc: BaseException) -> bool:
    """Did PostgreSQL refuse the credentials (as opposed to: unreachable, too many clients...)?"""
    state = getattr(exc, "sqlstate", None)
    if state in AUTH_SQLSTATES:
        return True
    text = str(exc).lower()
    return any(m in text for m in _AUTH_MARKERS)


class PgServer:
    """One private cluster: ``host``, ``port``, ``superuser``, ``password``, ``dsn()``."""

    def __init__(self, base: Path, port: int, password: str, bindir: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.sockdir = base / "sock"
        self.logfile = base / "postgres.log"
        self.host = "127.0.0.1"
        self.port = port
        self.superuser = "postgres"
        self.password = password
        self.dbname = "postgres"
        self.bindir = bindir
        self._running = False

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, *, attempts: int = 3, timeout: float = 60.0) -> PgServer:
        """initdb + start; a port taken meanwhile by someone else is retried on another."""
        bindir = pg_bindir()
        base = Path(tempfile.mkdtemp(prefix="maily-pg-"))
        password = secrets.token_urlsafe(24)
        server = cls(base, _free_port(), password, bindir)
        try:
            server._initdb(timeout)
            last: PgError | None = None
            for _ in range(attempts):
                try:
                    server._start(timeout)
                    break
                except PgError as exc:
                    last = exc
                    if "could not bind" not in server.log_tail().lower():
                        raise
                    server.port = _free_port()
                    server._write_port()
            else:
                assert last is not None
                raise last
        except BaseException:
            server.stop()
            raise
        _LIVE.add(server)
        return server

    def _as_owner(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary as the ``postgres`` OS user (it refuses to run as root)."""
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", _OS_USER, "--", *cmd]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C",
            "LC_ALL": "C",
            "TZ": "UTC",
        }
        try:
            return subprocess.run(
                cmd,
                cwd=self.base,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise PgError(f"{argv[0]} {argv[1:3]} did not finish within {timeout:.0f}s") from None

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, _OS_USER, _OS_USER)

    def _initdb(self, timeout: float) -> None:
        os.chmod(self.base, 0o700)
        self._chown(self.base)
        pwfile = self.base / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._chown(pwfile)
        try:
            r = self._as_owner(
                "initdb",
                "-D",
                str(self.datadir),
                f"--username={self.superuser}",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                timeout=timeout,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise PgError(f"initdb failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
        self.sockdir.mkdir(mode=0o700)
        self._chown(self.sockdir)
        # Every connection, over the socket or TCP, must prove a SCRAM password.
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "# maily tests: real password checks everywhere\n"
            "local   all   all                 scram-sha-256\n"
            "host    all   all   127.0.0.1/32  scram-sha-256\n"
        )
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# --- maily private test cluster ---\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "max_connections = 300\n"
                "shared_buffers = 32MB\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "logging_collector = off\n"
                "log_min_messages = warning\n"
                "timezone = 'UTC'\n"
            )
        self._write_port()

    def _write_port(self) -> None:
        # postgresql.auto.conf is read last: the port given here wins.
        (self.datadir / "postgresql.auto.conf").write_text(f"port = {self.port}\n")
        self._chown(self.datadir / "postgresql.auto.conf")

    def _start(self, timeout: float) -> None:
        # pg_ctl -l needs a log file the postgres user can write.
        self.logfile.touch()
        self._chown(self.logfile)
        r = self._as_owner(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        if r.returncode != 0:
            self._running = self._postmaster_pid() is not None
            raise PgError(
                f"pg_ctl start failed ({r.returncode}): {r.stderr.strip()[-500:]}\n"
                f"{self.log_tail()}"
            )
        self._running = True
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if self.try_login(self.superuser, self.password):
                    return
                raise PgError("the superuser's own password was refused")
            except LoginError as exc:
                last = exc
                time.sleep(0.1)
        raise PgError(f"PostgreSQL on port {self.port} not ready after {timeout:.0f}s: {last}")

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the cluster (fast, then immediate, then SIGKILL) and delete its directory."""
        _LIVE.discard(self)
        if self.datadir.exists() and self._postmaster_pid() is not None:
            for mode, wait in (("fast", timeout), ("immediate", 10.0)):
                with contextlib.suppress(PgError):
                    self._as_owner(
                        "pg_ctl",
                        "-D",
                        str(self.datadir),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        str(int(wait)),
                        "stop",
                        timeout=wait + 5,
                    )
                if self._postmaster_pid() is None:
                    break
            pid = self._postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while self._postmaster_pid() is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
        self._running = False
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:  # never the password
        return f"PgServer(host={self.host!r}, port={self.port}, superuser={self.superuser!r})"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ connecting
    def conninfo(
        self, user: str | None = None, password: str | None = None, dbname: str | None = None
    ) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": user or self.superuser,
            "password": self.password if password is None else password,
            "dbname": dbname or self.dbname,
            "sslmode": "disable",
            "connect_timeout": 5,
        }

    def dsn(self, user: str | None = None, password: str | None = None) -> str:
        """A libpq URL (contains the password: do not print it)."""
        c = self.conninfo(user, password)
        return psycopg.conninfo.make_conninfo(**c)

    def vault_connection_url(self, dbname: str | None = None) -> str:
        """The templated URL for Vault's database engine (no password inside)."""
        return (
            f"postgresql://{{{{username}}}}:{{{{password}}}}@{self.host}:{self.port}/"
            f"{dbname or self.dbname}?sslmode=disable"
        )

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        """A superuser connection (autocommit)."""
        return psycopg.connect(**{**self.conninfo(), **kw}, autocommit=True)

    def try_login(self, user: str, password: str, dbname: str | None = None) -> bool:
        """True: logged in (and ran ``SELECT 1``); False: the credentials were refused.

        Raises :class:`LoginError` for anything else (refused connection, too many
        clients, ...), so a down server never passes for a refused password.
        """
        try:
            with psycopg.connect(**self.conninfo(user, password, dbname)) as conn:
                conn.execute("SELECT 1").fetchone()
            return True
        except psycopg.OperationalError as exc:
            if is_auth_failure(exc):
                return False
            raise LoginError(f"login as {user!r} failed: {_scrub(str(exc), password)}") from None

    async def try_login_async(self, user: str, password: str, dbname: str | None = None) -> bool:
        """:meth:`try_login` without blocking the event loop."""
        try:
            conn = await psycopg.AsyncConnection.connect(**self.conninfo(user, password, dbname))
            async with conn:
                await (await conn.execute("SELECT 1")).fetchone()
            return True
        except psycopg.OperationalError as exc:
            if is_auth_failure(exc):
                return False
            raise LoginError(f"login as {user!r} failed: {_scrub(str(exc), password)}") from None

    # ------------------------------------------------------------------ inspecting
    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(statement, params or None)
            return list(cur.fetchall()) if cur.description else []

    def role_exists(self, name: str) -> bool:
        return bool(self.query("SELECT 1 FROM pg_roles WHERE rolname = %s", name))

    def roles(self, prefix: str = "") -> list[str]:
        rows = self.query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY rolname",
            prefix.replace("%", r"\%").replace("_", r"\_") + "%",
        )
        return [str(r[0]) for r in rows]

    def drop_role(self, name: str) -> None:
        """Drop a login role and what it owns or was granted (in the default database)."""
        if not self.role_exists(name):
            return
        ident = sql.Identifier(name)
        with self.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    def create_database(self, name: str) -> None:
        if not self.query("SELECT 1 FROM pg_database WHERE datname = %s", name):
            with self.connect() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _scrub(text: str, *secret_values: str) -> str:
    for v in secret_values:
        if v:
            text = text.replace(v, "******")
    return text


# Servers not stopped by their fixture (an interrupted session): stop them at exit.
_LIVE: set[PgServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The session's private, password-checking PostgreSQL (import into the test module)."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()
