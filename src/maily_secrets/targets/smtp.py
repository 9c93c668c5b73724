"""SMTP, where the ``smtp`` credentials are used: one session routine for everything
that logs in to an SMTP server (the rotation notifications and the smtp rotator's
login check, :func:`login_check`).

:func:`open_session` connects (implicit TLS or plain), says EHLO, yields the
session, and always says QUIT (or closes); smtplib, TLS and socket errors become
``fail(message)``, a message without any secret. What TLS a caller insists on
before AUTH is its own policy: it upgrades with :meth:`SmtpSession.starttls` and
logs in with :func:`login_once`.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import scrubbed_line


def login_once(conn: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH PLAIN or LOGIN, exactly once.

    ``smtplib.SMTP.login`` retries a rejected password with every other mechanism, and
    servers commonly hang up after the first rejection (and count each try as a
    failed login). CRAM-MD5-only servers fall back to ``login``.
    """
    offered = conn.esmtp_features.get("auth", "").upper().split()
    for mech in ("PLAIN", "LOGIN"):
        if mech in offered:
            conn.user, conn.password = username, password
            auth = conn.auth_plain if mech == "PLAIN" else conn.auth_login
            conn.auth(mech, auth, initial_response_ok=True)
            return
    conn.login(username, password)


def server_text(raw: bytes | str, redact: Callable[[str], str]) -> str:
    """A server's answer on one line, through ``redact`` (at most 200 characters)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return redact(" ".join(text.split()))[:200]


@dataclass
class SmtpSession:
    """An open SMTP connection; ``security`` is "TLS" (implicit), "STARTTLS" or "no TLS"."""

    conn: smtplib.SMTP
    where: str
    security: str

    @property
    def tls(self) -> bool:
        return self.security != "no TLS"

    def starttls(self, context: ssl.SSLContext | None) -> None:
        """Upgrade to TLS and say EHLO again (the server's features may change)."""
        self.conn.starttls(context=context)
        self.conn.ehlo()
        self.security = "STARTTLS"


@contextmanager
def open_session(
    host: str,
    port: int,
    *,
    implicit: bool,
    context: ssl.SSLContext | None,
    timeout: float,
    fail: Callable[[str], Exception],
    redact: Callable[[str], str],
) -> Iterator[SmtpSession]:
    """Connect to ``host:port`` (implicit TLS with ``implicit``), EHLO, yield the session.

    An smtplib, TLS or socket error, while connecting or in the ``with`` body, is raised
    as ``fail(message)`` (the server's answer passed through ``redact``); the caller
    catches the smtplib errors it words itself (a refused login...) inside the body.
    The connection is always closed.
    """
    where = f"{host}:{port}"
    conn: smtplib.SMTP | None = None
    try:
        try:
            if implicit:
                conn = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
                session = SmtpSession(conn, where, "TLS")
            else:
                conn = smtplib.SMTP(host, port, timeout=timeout)
                session = SmtpSession(conn, where, "no TLS")
            conn.ehlo()
            yield session
        except smtplib.SMTPResponseException as exc:
            raise fail(
                f"SMTP server {where} answered {exc.smtp_code}"
                f" {server_text(exc.smtp_error, redact)}"
            ) from None
        except smtplib.SMTPException as exc:
            raise fail(f"SMTP error with {where}: {type(exc).__name__}") from None
        except ssl.SSLError as exc:
            raise fail(
                f"TLS with SMTP server {where} failed: {exc.reason or type(exc).__name__}"
            ) from None
        except (TimeoutError, OSError) as exc:
            why = exc.strerror or type(exc).__name__
            raise fail(f"cannot reach SMTP server {where}: {why}") from None
    finally:
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()


@dataclass(frozen=True)
class SmtpServer:
    """An SMTP server and how to reach it; ``tls``: auto, starttls, implicit or none."""

    host: str
    port: int
    tls: str
    cafile: str | None
    timeout: float

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def login_check(
    server: SmtpServer,
    username: str | None = None,
    password: str | None = None,
    *,
    fail: Callable[[str], Exception],
) -> str:
    """Blocking: connect, EHLO, TLS as configured, and (with credentials) AUTH.

    Never AUTH in plaintext unless ``server.tls`` is ``none``. Without credentials it
    only checks that the server answers and offers AUTH. Returns a short description
    ("STARTTLS", "TLS", "no TLS"); raises ``fail(message)`` (no secret in it).
    """

    def redact(text: str) -> str:
        return scrubbed_line(text, password)

    implicit = server.tls == "implicit" or (server.tls == "auto" and server.port == 465)
    try:
        ctx = ssl.create_default_context(cafile=server.cafile) if server.tls != "none" else None
    except (OSError, ssl.SSLError) as exc:
        raise fail(f"cannot load the CA bundle {server.cafile}: {type(exc).__name__}") from None
    with open_session(
        server.host,
        server.port,
        implicit=implicit,
        context=ctx,
        timeout=server.timeout,
        fail=fail,
        redact=redact,
    ) as session:
        if not implicit and server.tls in ("auto", "starttls"):
            if not session.conn.has_extn("starttls"):
                raise fail(
                    f"SMTP server {server.where} does not offer STARTTLS (option tls:"
                    f" {server.tls}); refusing to log in without TLS (tls: none allows it)"
                )
            session.starttls(ctx)
        if not session.conn.has_extn("auth"):
            raise fail(
                f"SMTP server {server.where} does not offer AUTH"
                + ("" if session.tls else " without TLS")
            )
        if username is not None and password is not None:
            try:
                login_once(session.conn, username, password)
            except smtplib.SMTPAuthenticationError as exc:
                raise fail(
                    f"SMTP login as {username} at {server.where} was refused"
                    f" ({exc.smtp_code} {server_text(exc.smtp_error, redact)})"
                ) from None
        return session.security


__all__ = ["SmtpServer", "SmtpSession", "login_check", "login_once", "open_session", "server_text"]
