"""A real SMTP server (aiosmtpd) that requires AUTH and records what it got.

    with smtp_server() as box:              # or the ``smtp`` fixture of tests/conftest.py
        settings = box.settings()           # smtp_host/port/username/password for Vault
        ...
        (msg,) = box.received               # content, mail_from, rcpt_tos, authenticated, tls
        box.logins                          # [(mechanism, user, "ok" | "rejected"), ...]

It accepts ``SMTP_USER`` / ``SMTP_PASSWORD`` (a canary: no test may find it in a message,
a detail or a log line) unless given another ``check(user, password)``. No MAIL FROM
without a successful AUTH; plaintext AUTH unless ``auth_require_tls=True`` is passed.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER = "maily-notify"
SMTP_PASSWORD = f"CANARY-smtp-password-{uuid.uuid4().hex[:12]}"

Check = Callable[[str, str], bool]


@dataclass
class Smtp:
    """What a running test SMTP server saw."""

    port: int
    received: list[dict[str, Any]] = field(default_factory=list)
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # mechanism, user, ok

    def settings(self, password: str = SMTP_PASSWORD) -> dict[str, Any]:
        """The SMTP keys of a Vault secret pointing at this server."""
        return {
            "smtp_host": "127.0.0.1",
            "smtp_port": str(self.port),  # strings in Vault are fine
            "smtp_username": SMTP_USER,
            "smtp_password": password,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_check(user: str, password: str) -> bool:
    return user == SMTP_USER and password == SMTP_PASSWORD


class _Sink:
    def __init__(self, box: Smtp) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.box.received.append(
            {
                "content": envelope.content,
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "authenticated": session.authenticated,
                "tls": session.ssl is not None,
            }
        )
        return "250 OK"


def start_smtp(check: Check = default_check, **kw: Any) -> tuple[Controller, Smtp]:
    """Start a server (``kw`` goes to aiosmtpd's ``Controller``); the caller stops it."""
    box = Smtp(port=free_port())

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            box.logins.append((mechanism, "?", "rejected"))
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        ok = check(user, auth_data.password.decode())
        box.logins.append((mechanism, user, "ok" if ok else "rejected"))
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    kw.setdefault("auth_require_tls", False)
    kw.setdefault("decode_data", True)
    ctl = Controller(
        _Sink(box),
        hostname="127.0.0.1",
        port=box.port,
        authenticator=authenticator,
        auth_required=True,  # no MAIL FROM without a successful AUTH
        **kw,
    )
    ctl.start()
    return ctl, box


@contextmanager
def smtp_server(check: Check = default_check, **kw: Any) -> Iterator[Smtp]:
    """A running server for the ``with`` block (see :func:`start_smtp`)."""
    ctl, box = start_smtp(check, **kw)
    try:
        yield box
    finally:
        ctl.stop()
