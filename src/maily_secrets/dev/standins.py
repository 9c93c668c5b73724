"""Local stand-ins for development: AWS IAM/STS (moto) and an SMTP server with AUTH.

``mailyctl dev up`` starts both next to the OpenBao dev server, as background
processes recorded in ``<dev state dir>/standins/`` (``moto.json``, ``smtp.json``;
``dev down`` stops them by pid, after checking the pid is still ours), and points
Maily's secrets at them:

* **moto** (``python -m moto.server`` on a free 127.0.0.1 port): IAM user
  ``maily-app`` with an access key and a policy that lets it rotate its own keys;
  then IAM authentication is switched on, so a deleted or wrong key really stops
  working. ``maily/data/credentials`` ``aws`` holds the key. The ``aws`` rotator
  reaches moto through ``$MAILY_AWS_ENDPOINT_URL`` (:func:`dev_environment`).
* **SMTP** (aiosmtpd, port 2525 when free): accepts exactly the credentials of a
  registry file (``smtp-credentials.json``, mode 0600, salted PBKDF2 hashes only).
  The ``smtp`` rotator's ``hook`` provider writes new passwords there through
  ``python -m maily_secrets.dev.standins smtp-hook --store <file>`` (password on stdin),
  so a rotation really changes what the server accepts. Messages received are kept
  in ``smtp-mail/`` (one ``.eml`` file each).

A rotation config for this dev directory is written to ``standins/rotation.yaml`` (the
built-in config plus ``endpoint_url`` for ``aws``, the hook for ``smtp``, and the dev
directory's own PostgreSQL login roles and Redis ACL user). Every file made here is
recorded in the dev directory's manifest (``server.Manifest``): ``dev down``
removes those and nothing else.

The registry and the hook protocol (see ``rotation/rotators/smtp.py``)::

    python -m maily_secrets.dev.standins smtp-hook --store FILE apply|rollback|retire
    stdin: {"username", "password" (apply), "credential_id", "current_credential_id"...}
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from ..procs import pid_alive
from .logfilter import write_private
from .server import CHILDREN, Manifest, port_in_use, stop_ours

STANDIN_DIR = "standins"
MOTO_USER = "maily-app"
MOTO_REGION = "us-east-1"
SMTP_DEFAULT_PORT = 2525
STORE_FILE = "smtp-credentials.json"
MAIL_DIR = "smtp-mail"
PBKDF2_ITERATIONS = 20_000
# What ``maily-app`` may do in the stand-in (on real AWS, scope it to the user itself:
# "Resource": "arn:aws:iam::<account>:user/${aws:username}").
SELF_ROTATION_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "iam:GetUser",
                "iam:ListAccessKeys",
                "iam:CreateAccessKey",
                "iam:UpdateAccessKey",
                "iam:DeleteAccessKey",
                "iam:GetAccessKeyLastUsed",
            ],
            "Resource": "*",
        }
    ],
}


class StandinError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- helpers
def free_port(preferred: int | None = None) -> int:
    if preferred is not None and not port_in_use(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- processes
@dataclass
class StandinInfo:
    name: str
    pid: int
    host: str
    port: int
    log: str
    started_at: float

    @property
    def addr(self) -> str:
        return f"http://{self.host}:{self.port}"


class _Background:
    """A background process of ours, recorded in ``<state>/standins/<name>.json``."""

    name = ""
    module = ""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.dir = self.state_dir / STANDIN_DIR
        self.pid_file = self.dir / f"{self.name}.json"

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def ready(self, info: StandinInfo) -> bool:
        raise NotImplementedError

    def claim(self, manifest: Manifest) -> None:
        """Record (before they exist) the files this stand-in makes."""
        manifest.claim_dir(self.dir, generated=(".*.tmp",))
        manifest.claim_file(self.pid_file)
        manifest.claim_file(self.dir / f"{self.name}.log")

    def info(self) -> StandinInfo | None:
        try:
            return StandinInfo(**json.loads(self.pid_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _ours(self, pid: int) -> bool:
        """The pid runs our module, from our directory (not a recycled pid)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return pid_alive(pid)  # no /proc: trust the pid file
        return self.module.encode() in cmdline and Path(cwd) == self.dir

    def running(self) -> StandinInfo | None:
        info = self.info()
        if info is not None and pid_alive(info.pid) and self._ours(info.pid):
            return info
        return None

    def start(self, port: int | None = None, wait: float = 30.0) -> tuple[StandinInfo, bool]:
        current = self.running()
        if current is not None:
            return current, False
        self.claim(Manifest(self.state_dir))
        port = free_port(port)
        log = self.dir / f"{self.name}.log"
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        try:
            proc = subprocess.Popen(
                self.argv(port),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        CHILDREN[proc.pid] = proc
        info = StandinInfo(self.name, proc.pid, "127.0.0.1", port, str(log), time.time())
        write_private(self.pid_file, json.dumps(asdict(info), indent=2))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise StandinError(
                    f"{self.name} exited with code {proc.returncode} while starting; see {log}"
                )
            if port_in_use(port) and self.ready(info):
                return info, True
            time.sleep(0.1)
        self.stop()
        raise StandinError(f"{self.name} did not start within {wait:.0f}s; see {log}")

    def stop(self, timeout: float = 10.0) -> bool:
        info = self.info()
        was_running = info is not None and stop_ours(info.pid, self._ours, timeout)
        self.pid_file.unlink(missing_ok=True)
        return was_running


class MotoStandin(_Background):
    """moto's server (AWS APIs in memory) on 127.0.0.1."""

    name = "moto"
    module = "moto.server"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def ready(self, info: StandinInfo) -> bool:
        try:
            with urllib.request.urlopen(f"{info.addr}/moto-api/", timeout=1) as r:  # noqa: S310
                return int(r.status) == 200
        except (OSError, urllib.error.URLError):
            return False


def moto_enable_auth(endpoint: str) -> None:
    """From now on moto checks every request's signature and IAM policies."""
    req = urllib.request.Request(  # noqa: S310 - a loopback stand-in
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
        r.read()


def moto_setup_user(
    endpoint: str,
    user: str,
    policy: dict[str, Any] | None = None,
    *,
    creds: tuple[str, str] = ("testing", "testing"),
) -> tuple[str, str]:
    """Create an IAM user with an inline policy and an access key: (key id, secret)."""
    import boto3  # type: ignore[import-untyped]

    iam = boto3.session.Session().client(
        "iam",
        endpoint_url=endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1],
    )
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName=f"{user}-policy",
        PolicyDocument=json.dumps(policy or SELF_ROTATION_POLICY),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


class SmtpStandin(_Background):
    """An aiosmtpd server with AUTH against the credential registry."""

    name = "smtp"
    module = "maily_secrets.dev.standins"

    @property
    def store_path(self) -> Path:
        return self.dir / STORE_FILE

    def argv(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "maily_secrets.dev.standins",
            "smtp",
            "--port",
            str(port),
            "--store",
            str(self.store_path),
            "--mail-dir",
            str(self.dir / MAIL_DIR),
        ]

    def ready(self, info: StandinInfo) -> bool:
        import smtplib

        try:
            with smtplib.SMTP(info.host, info.port, timeout=2) as s:
                return int(s.ehlo()[0]) == 250
        except (OSError, smtplib.SMTPException):
            return False

    def claim(self, manifest: Manifest) -> None:
        super().claim(manifest)
        manifest.claim_file(self.store_path)
        manifest.claim_file(self.store_path.with_name(self.store_path.name + ".lock"))
        manifest.claim_dir(self.dir / MAIL_DIR, generated=("*.eml",))

    def hook_argv(self) -> list[str]:
        return smtp_hook_argv(self.store_path)


def smtp_hook_argv(store: Path) -> list[str]:
    """The ``hook`` option that writes to the registry ``store``."""
    return [sys.executable, "-m", "maily_secrets.dev.standins", "smtp-hook", "--store", str(store)]


# ---------------------------------------------------------------------------- registry
class CredentialStore:
    """Who may log in to the SMTP stand-in: a JSON file (0600) of salted PBKDF2 hashes.

    Each credential: ``{"username", "id", "salt", "hash", "added_at"}``. A username
    may hold several passwords at once (the previous one during a grace period).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            creds = self.load()
            yield creds
            write_private(self.path, json.dumps({"credentials": creds}, indent=1))
        finally:
            os.close(lock)

    def load(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        creds = doc.get("credentials") if isinstance(doc, dict) else None
        return [c for c in creds or [] if isinstance(c, dict)]

    @staticmethod
    def _hash(password: str, salt: bytes) -> str:
        return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS).hex()

    def add(self, username: str, password: str, credential_id: str) -> None:
        """Idempotent for the same ``credential_id``."""
        salt = secrets.token_bytes(16)
        entry = {
            "username": username,
            "id": credential_id,
            "salt": salt.hex(),
            "hash": self._hash(password, salt),
            "added_at": time.time(),
        }
        with self._locked() as creds:
            creds[:] = [c for c in creds if c.get("id") != credential_id]
            creds.append(entry)

    def remove(self, credential_id: str) -> int:
        with self._locked() as creds:
            before = len(creds)
            creds[:] = [c for c in creds if c.get("id") != credential_id]
            return before - len(creds)

    def retire(
        self,
        username: str,
        credential_id: str | None,
        keep: str | None = None,
    ) -> int:
        """Remove ``credential_id``; with None, every password of ``username`` but ``keep``."""
        with self._locked() as creds:
            before = len(creds)
            if credential_id is not None:
                creds[:] = [c for c in creds if c.get("id") != credential_id]
            else:
                creds[:] = [
                    c for c in creds if c.get("username") != username or c.get("id") == keep
                ]
            return before - len(creds)

    def check(self, username: str, password: str) -> bool:
        ok = False
        for c in self.load():
            if c.get("username") != username:
                continue
            try:
                digest = self._hash(password, bytes.fromhex(str(c.get("salt"))))
            except ValueError:
                continue
            ok |= hmac.compare_digest(digest, str(c.get("hash")))
        return ok

    def ids(self, username: str | None = None) -> list[str]:
        return [
            str(c.get("id"))
            for c in self.load()
            if username is None or c.get("username") == username
        ]


def hook_main(store: Path, action: str, stdin: str) -> int:
    """``smtp-hook``: apply/rollback/retire a credential of the registry from stdin JSON."""
    try:
        doc = json.loads(stdin)
    except ValueError:
        print("smtp-hook: stdin is not a JSON object", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        print("smtp-hook: stdin is not a JSON object", file=sys.stderr)
        return 2
    reg = CredentialStore(store)
    username = str(doc.get("username") or "")
    cid = doc.get("credential_id")
    if action == "apply":
        password = doc.get("password")
        if not username or not isinstance(password, str) or not password or not cid:
            print("smtp-hook: apply needs username, password and credential_id", file=sys.stderr)
            return 2
        reg.add(username, password, str(cid))
    elif action == "rollback":
        if not cid:
            print("smtp-hook: rollback needs credential_id", file=sys.stderr)
            return 2
        reg.remove(str(cid))
    elif action == "retire":
        if not username:
            print("smtp-hook: retire needs username", file=sys.stderr)
            return 2
        keep = doc.get("current_credential_id")
        reg.retire(username, str(cid) if cid else None, str(keep) if keep else None)
    else:
        print(f"smtp-hook: unknown action {action!r}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------- SMTP server
class _Handler:
    def __init__(self, mail_dir: Path | None) -> None:
        self.mail_dir = mail_dir
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        if self.mail_dir is not None:
            self.mail_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            name = make_msgid(domain="standin").strip("<>").replace("@", "_")
            content = envelope.original_content or envelope.content or b""
            if isinstance(content, str):
                content = content.encode("utf-8", "replace")
            (self.mail_dir / f"{name}.eml").write_bytes(content)
        return "250 OK"


def smtp_authenticator(store: CredentialStore) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        # handled=False: aiosmtpd answers 535 itself (True would leave the client waiting)
        return AuthResult(success=store.check(user, password), handled=False)

    return authenticator


def smtp_controller(
    store: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    mail_dir: Path | None = None,
    tls_context: Any = None,
) -> Any:
    """An aiosmtpd ``Controller`` (not started) that authenticates against ``store``."""
    from aiosmtpd.controller import Controller

    kw: dict[str, Any] = {}
    if tls_context is not None:
        kw["tls_context"] = tls_context
    return Controller(
        _Handler(mail_dir),
        hostname=host,
        port=port or free_port(),
        authenticator=smtp_authenticator(CredentialStore(store)),
        auth_required=True,
        auth_require_tls=tls_context is not None,
        **kw,
    )


def _serve_smtp(host: str, port: int, store: Path, mail_dir: Path | None) -> int:
    import warnings

    # a loopback development server: AUTH without TLS is what it is for
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    warnings.filterwarnings("ignore", message="auth_required == True but auth_require_tls")
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    ctl = smtp_controller(store, host=host, port=port, mail_dir=mail_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ctl.start()
    print(f"SMTP stand-in listening on {host}:{port}", flush=True)
    try:
        stop.wait()
    finally:
        ctl.stop()
    return 0


# ---------------------------------------------------------------------------- dev up/down
#: one line of ``dev up``'s output: plain text and (text, Rich style) pairs
Line = list[str | tuple[str, str]]


@dataclass
class DevStandins:
    """What ``dev up`` printed about the stand-ins, and where they are."""

    #: each line as parts: plain text or (text, style); never Rich markup, so text
    #: such as ``[devserver]`` or an error message prints as it is
    lines: list[Line]
    moto: StandinInfo | None = None
    smtp: StandinInfo | None = None
    rotation_config: Path | None = None


def stop_all(state_dir: Path) -> list[str]:
    """Stop every stand-in recorded in ``state_dir``; the names of those that ran."""
    return [cls.name for cls in (MotoStandin, SmtpStandin) if cls(state_dir).stop()]


def dev_environment(state_dir: Path) -> dict[str, str]:
    """Variables a shell (or `secrets rotate`) needs to use the running stand-ins."""
    env: dict[str, str] = {}
    moto = MotoStandin(state_dir).running()
    if moto is not None:
        env["MAILY_AWS_ENDPOINT_URL"] = moto.addr
    cfg = Path(state_dir).resolve() / STANDIN_DIR / "rotation.yaml"
    if cfg.exists():
        env["MAILY_ROTATION_CONFIG"] = str(cfg)
    return env


def write_rotation_config(
    state_dir: Path,
    moto: StandinInfo | None,
    smtp: SmtpStandin | None,
    type_options: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """The built-in rotation config plus the stand-ins' options and ``type_options``
    (per type, merged into its ``options``: the dev directory's own role names)."""
    from importlib import resources

    import yaml

    doc = yaml.safe_load(
        (resources.files("maily_secrets.rotation") / "default_config.yaml").read_text()
    )
    types = doc.setdefault("types", {})
    if moto is not None and "aws" in types:
        types["aws"].setdefault("options", {})["endpoint_url"] = moto.addr
    if smtp is not None and "smtp" in types:
        types["smtp"]["options"] = {
            "provider": "hook",
            "hook": smtp.hook_argv(),
            "retire_hook": True,
            "tls": "none",
            "verify_timeout": 5,
        }
    if smtp is not None:
        # the dev SMTP stand-in has no TLS: say so, or notifications refuse plaintext AUTH
        doc.setdefault("notify", {}).setdefault("email", {})["tls"] = "none"
    for name in ("database", "redis"):
        if name in types:
            # a dev server retires the previous credential as soon as nobody uses it
            # (the target shows it): `rotate --wait-retire` closes the loop in one run
            types[name]["min_grace"] = "0s"
    for name, extra in (type_options or {}).items():
        if name in types:
            types[name]["options"] = {**(types[name].get("options") or {}), **extra}
    manifest = Manifest(Path(state_dir))
    manifest.claim_dir(Path(state_dir).resolve() / STANDIN_DIR, generated=(".*.tmp",))
    path = manifest.claim_file(Path(state_dir).resolve() / STANDIN_DIR / "rotation.yaml")
    write_private(
        path,
        "# Written by `mailyctl dev up`: the built-in config + the local stand-ins"
        " + this dev directory's PostgreSQL roles and Redis user.\n"
        + yaml.safe_dump(doc, sort_keys=False),
    )
    return path


async def _point_vault_at(
    client: Any, kv_mount: str, aws: dict[str, Any] | None, smtp: tuple[str, int] | None
) -> None:
    from ..paths import KV2Path

    if aws is not None:

        def set_aws(cur: dict[str, Any]) -> dict[str, Any]:
            m = cur.get("aws")
            cur["aws"] = {**(m if isinstance(m, dict) else {}), **aws}
            return cur

        await client.kv.update(KV2Path(kv_mount, "credentials"), set_aws)
    if smtp is not None:

        def set_smtp(cur: dict[str, Any]) -> dict[str, Any]:
            cur["smtp_host"], cur["smtp_port"] = smtp
            return cur

        await client.kv.update(KV2Path(kv_mount, "config"), set_smtp)


def _installed(module: str, what: str, lines: list[Line]) -> bool:
    """Whether ``module`` can be imported; if not, a line says why ``what`` is skipped."""
    if importlib.util.find_spec(module) is not None:
        return True
    lines.append(
        [
            "  ",
            (f"{what}: skipped", "yellow"),
            f" ({module} is not installed: pip install 'maily-secrets[devserver]')",
        ]
    )
    return False


def _bring_up(
    standin: _Background,
    what: str,
    label: str,
    lines: list[Line],
    start: Callable[[], tuple[StandinInfo, bool]],
    first: Callable[[StandinInfo], None],
    line: Callable[[StandinInfo, str], Line],
) -> StandinInfo | None:
    """Start ``standin`` (``first`` runs once when it was not running yet) and say so in
    ``lines``; a failure stops it and says why ``what`` is skipped."""
    try:
        info, started = start()
        if started:
            first(info)
    except Exception as exc:
        standin.stop()
        lines.append(["  ", (f"{what}: skipped", "yellow"), f" ({label}: {exc})"])
        return None
    lines.append(line(info, "started" if started else "already running"))
    return info


def dev_up(
    state_dir: Path,
    vault_addr: str,
    token: str,
    kv_mount: str = "maily",
    type_options: dict[str, dict[str, Any]] | None = None,
) -> DevStandins:
    """Start the stand-ins (unless running) and point ``maily/`` at them (blocking);
    write the dev directory's rotation config (with ``type_options``)."""
    import asyncio

    from ..settings import VaultSettings
    from ..vault.client import VaultClient

    out = DevStandins(lines=[])
    settings = VaultSettings(addr=vault_addr, token=token, auth_method="token", kv_mount=kv_mount)

    async def read_smtp_creds() -> tuple[str, str]:
        from ..paths import KV2Path

        async with VaultClient(settings) as c:
            data = (await c.kv.read(KV2Path(kv_mount, "config"))).data
        return str(data.get("smtp_username") or "maily"), str(data.get("smtp_password") or "")

    async def write(aws: dict[str, Any] | None, smtp: tuple[str, int] | None) -> None:
        async with VaultClient(settings) as c:
            await _point_vault_at(c, kv_mount, aws, smtp)

    # -- AWS (moto) -------------------------------------------------------------------
    def moto_first(info: StandinInfo) -> None:
        akid, secret = moto_setup_user(info.addr, MOTO_USER)
        moto_enable_auth(info.addr)
        creds = {"aws_access_key": akid, "aws_secret_key": secret, "aws_region": MOTO_REGION}
        asyncio.run(write(creds, None))

    moto = MotoStandin(state_dir)
    if _installed("moto", "aws", out.lines):
        out.moto = _bring_up(
            moto,
            "aws",
            "moto stand-in",
            out.lines,
            moto.start,
            moto_first,
            lambda info, how: [
                f"  aws: IAM/STS stand-in (moto) {how} at ",
                (info.addr, "bold"),
                f" (pid {info.pid}); IAM user {MOTO_USER}, its key in {kv_mount}/data/credentials",
            ],
        )

    # -- SMTP (aiosmtpd) -----------------------------------------------------------------
    def smtp_first(info: StandinInfo) -> None:
        username, password = asyncio.run(read_smtp_creds())
        store = CredentialStore(smtp.store_path)
        if password and not store.check(username, password):
            store.add(username, password, "dev-up")
        asyncio.run(write(None, (info.host, info.port)))

    smtp = SmtpStandin(state_dir)
    if _installed("aiosmtpd", "smtp", out.lines):
        out.smtp = _bring_up(
            smtp,
            "smtp",
            "SMTP stand-in",
            out.lines,
            lambda: smtp.start(SMTP_DEFAULT_PORT),
            smtp_first,
            lambda info, how: [
                f"  smtp: SMTP stand-in with AUTH {how} at ",
                (f"{info.host}:{info.port}", "bold"),
                f" (pid {info.pid}); smtp_* in {kv_mount}/data/config,"
                " new passwords through its hook",
            ],
        )
    smtp_ok = out.smtp is not None
    try:
        out.rotation_config = write_rotation_config(
            state_dir, out.moto, smtp if smtp_ok else None, type_options
        )
    except Exception as exc:
        out.lines.append(
            ["  ", ("rotation config for the stand-ins not written", "yellow"), f" ({exc})"]
        )
    return out


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maily_secrets.dev.standins")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smtp", help="run the SMTP stand-in (until SIGTERM)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=SMTP_DEFAULT_PORT)
    s.add_argument("--store", type=Path, required=True)
    s.add_argument("--mail-dir", type=Path, default=None)
    h = sub.add_parser("smtp-hook", help="the smtp rotator's hook: JSON on stdin")
    h.add_argument("--store", type=Path, required=True)
    h.add_argument("action", choices=["apply", "rollback", "retire"])
    args = p.parse_args(argv)
    if args.cmd == "smtp":
        return _serve_smtp(args.host, args.port, args.store, args.mail_dir)
    return hook_main(args.store, args.action, sys.stdin.read())


if __name__ == "__main__":
    sys.exit(main())
