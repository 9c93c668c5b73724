"""An SMTP sender whose login follows the rotation of the ``smtp`` type (aiosmtplib).

    smtp = await adapters.smtp_sender(vault_service)            # maily/data/config
    await smtp.send(message)                                    # email.message.EmailMessage

A small pool of logged-in connections (``max_size``, default 4). A new connection logs
in with the ``smtp_username``/``smtp_password`` the secret holds *now*; when a
rotation promotes new ones (a secret listener tells the sender) the idle connections
of the old login are closed at once and the ones sending are closed when they are
returned: every message after the switch goes out on a connection of the new login,
and none in flight is cut. An SMTP login stays valid after its password is removed
at the provider, so a connection opened with the previous password finishes its work
even past the retirement.

A send whose new connection is refused AUTH (535) retries once: with the credential
the secret holds after a fresh read (the listener may not have seen a rotation yet),
or the same one again if nothing changed. A pooled connection the server closed
(idle timeout) is replaced once, transparently.

TLS, as the ``smtp`` rotator's ``tls`` option means it (``rotation/rotators/smtp.py``):
``auto`` (implicit TLS on port 465, else STARTTLS, which the server must offer),
``starttls``, ``implicit``, or ``none``: plaintext AUTH, only when said explicitly.
``cafile``: a CA bundle for the server's certificate.

No password (nor message) appears in a log, an error or a repr; errors are
:class:`SmtpSendError` with the server's answer, scrubbed of the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..targets import scrubbed_line
from ._feed import CredentialFeed

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..service import VaultService

try:
    import aiosmtplib
except ImportError as exc:  # pragma: no cover - the [smtp] extra
    raise ImportError(
        "adapters.smtp_sender needs aiosmtplib: pip install 'maily-secrets[smtp]'"
    ) from exc

log = logging.getLogger("maily_secrets.adapters")
TLS_MODES = ("auto", "starttls", "implicit", "none")


class SmtpSendError(Exception):
    """Sending failed (the message names the server and its answer, never a password)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SmtpLogin:
    """Where to send and as whom (``password`` never in a repr)."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def pick_login(secret: dict[str, Any]) -> SmtpLogin:
    """``smtp_host``/``smtp_port``/``smtp_username``/``smtp_password`` of the secret."""
    host = str(secret.get("smtp_host") or "").strip()
    user, password = secret.get("smtp_username"), secret.get("smtp_password")
    if not host:
        raise ValueError("no smtp_host")
    if not isinstance(user, str) or not user or not isinstance(password, str) or not password:
        raise ValueError("no smtp_username and smtp_password")
    try:
        port = int(secret.get("smtp_port") or 587)
    except (TypeError, ValueError):
        raise ValueError("smtp_port is not a port") from None
    if not 0 < port < 65536:
        raise ValueError("smtp_port is not a port")
    return SmtpLogin(host, port, user, password)


@dataclass(eq=False)
class _Conn:
    smtp: aiosmtplib.SMTP = field(repr=False)
    generation: int
    created: float
    used: float


class SmtpSender:
    """Send messages through a pool of logged-in connections that follows the rotation.

    ``stats()``: the generation (1 at start, one more per new login), open connections
    per generation, and counters (opened, closed, sent, auth_retries, reconnects).
    """

    def __init__(
        self,
        feed: CredentialFeed[SmtpLogin],
        *,
        tls: str = "auto",
        cafile: str | None = None,
        timeout: float = 10.0,
        max_size: int = 4,
        max_lifetime: float = 300.0,
        max_idle: float = 60.0,
        client_name: str | None = None,
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)} (got {tls!r})")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.feed = feed
        self.tls = tls
        self.cafile = cafile
        self.timeout = timeout
        self.max_size = max_size
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.client_name = client_name or socket.gethostname() or "maily"
        self._tls_context: ssl.SSLContext | None = (
            ssl.create_default_context(cafile=cafile) if tls != "none" else None
        )
        self._idle: list[_Conn] = []
        self._open: dict[int, int] = {}
        self._slots = asyncio.Semaphore(max_size)
        self._refresh = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.counters = {
            "opened": 0,
            "closed": 0,
            "sent": 0,
            "failed": 0,
            "auth_retries": 0,
            "reconnects": 0,
        }

    def __repr__(self) -> str:
        login = self.feed._current
        who = f"{login.username}@{login.where}" if login else "not started"
        return f"<SmtpSender {who} generation={self.feed.generation} tls={self.tls}>"

    # -- stats -------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.feed.generation

    def stats(self) -> dict[str, Any]:
        return {
            "generation": self.feed.generation,
            "connections": {g: n for g, n in sorted(self._open.items()) if n},
            "idle": len(self._idle),
            **self.counters,
        }

    # -- connections -------------------------------------------------------------------
    def _implicit(self, login: SmtpLogin) -> bool:
        return self.tls == "implicit" or (self.tls == "auto" and login.port == 465)

    async def _connect(self, login: SmtpLogin, generation: int) -> _Conn:
        implicit = self._implicit(login)
        smtp = aiosmtplib.SMTP(
            hostname=login.host,
            port=login.port,
            local_hostname=self.client_name,  # EHLO: the server's log shows who we are
            timeout=self.timeout,
            use_tls=implicit,
            start_tls=False if implicit or self.tls == "none" else True,
            tls_context=self._tls_context,
        )
        try:
            await smtp.connect()
            if self.tls != "none" and smtp.get_transport_info("sslcontext") is None:
                raise SmtpSendError(f"no TLS with {login.where}; refusing to log in (tls: none)")
            await _login_once(smtp, login.username, login.password)
        except BaseException:
            smtp.close()
            raise
        now = time.monotonic()
        self._open[generation] = self._open.get(generation, 0) + 1
        self.counters["opened"] += 1
        return _Conn(smtp, generation, now, now)

    def _discard(self, conn: _Conn) -> None:
        """Close ``conn`` in the background (QUIT, then close)."""
        self._open[conn.generation] = self._open.get(conn.generation, 1) - 1
        self.counters["closed"] += 1

        async def bye() -> None:
            try:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await asyncio.wait_for(conn.smtp.quit(), 5)
            finally:
                conn.smtp.close()

        task = asyncio.get_running_loop().create_task(bye())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _usable(self, conn: _Conn, now: float) -> bool:
        return (
            conn.generation == self.feed.generation
            and now - conn.created < self.max_lifetime
            and now - conn.used < self.max_idle
            and conn.smtp.is_connected
        )

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if self._usable(conn, now):
                return conn
            self._discard(conn)
        return None

    def _give_back(self, conn: _Conn) -> None:
        now = time.monotonic()
        if self._closed or not self._usable(conn, now):
            self._discard(conn)  # an old login's connection ends when it is returned
            return
        conn.used = now
        self._idle.append(conn)

    def _drain_idle(self, new: SmtpLogin, generation: int) -> None:
        """A new login: close the idle connections of the old one now."""
        keep = [c for c in self._idle if c.generation == generation]
        for c in self._idle:
            if c.generation != generation:
                self._discard(c)
        self._idle = keep

    async def _refresh_login(self, failed: int) -> None:
        """AUTH was refused with generation ``failed``: read the secret from Vault
        (not the cache) so that a rotation the listener has not reported yet is used."""
        async with self._refresh:
            if self.feed.generation != failed:
                return  # somebody else already moved on
            service, path = self.feed.service, self.feed.path
            service.invalidate(path)
            value = await service.get_secret(path)
            await self.feed._changed(value)  # the same path as a listener's notification

    async def _new_conn(self) -> _Conn:
        login, generation = self.feed.current, self.feed.generation
        try:
            return await self._connect(login, generation)
        except aiosmtplib.SMTPAuthenticationError:
            self.counters["auth_retries"] += 1
            log.warning(
                "smtp_sender: login as %s at %s refused; retrying once with the credential"
                " in Vault now",
                login.username,
                login.where,
                extra={"adapter": "smtp_sender", "path": self.feed.path},
            )
            await self._refresh_login(generation)
            return await self._connect(self.feed.current, self.feed.generation)

    # -- the API -----------------------------------------------------------------------
    async def send(
        self,
        message: email.message.EmailMessage | email.message.Message,
        *,
        sender: str | None = None,
        recipients: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Send ``message`` (envelope from its headers unless given); returns the server's
        answer per refused recipient (empty: all accepted) and its final reply."""
        if self._closed:
            raise RuntimeError("smtp_sender is closed")
        async with self._slots:
            try:
                refused, reply = await self._send_once(message, sender, recipients)
            except aiosmtplib.SMTPException as exc:
                self.counters["failed"] += 1
                raise self._error(exc) from None
            except ssl.SSLError as exc:
                self.counters["failed"] += 1
                where = self.feed.current.where
                why = exc.reason or type(exc).__name__
                raise SmtpSendError(f"TLS with SMTP server {where} failed: {why}") from None
            except OSError as exc:
                self.counters["failed"] += 1
                where = self.feed.current.where
                why = exc.strerror or type(exc).__name__
                raise SmtpSendError(f"SMTP server {where}: {why}") from None
            except BaseException:
                self.counters["failed"] += 1
                raise
        self.counters["sent"] += 1
        return {
            "refused": {r: str(v) for r, v in refused.items()},
            "reply": scrubbed_line(reply, self.feed.current.password),
        }

    async def _send_once(self, message: Any, sender: Any, recipients: Any) -> Any:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._send_on(conn, message, sender, recipients)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                # the server closed a pooled connection (idle timeout): once more, anew
                self.counters["reconnects"] += 1
        conn = await self._new_conn()
        return await self._send_on(conn, message, sender, recipients)

    async def _send_on(self, conn: _Conn, message: Any, sender: Any, recipients: Any) -> Any:
        try:
            out = await conn.smtp.send_message(message, sender=sender, recipients=recipients)
        except aiosmtplib.SMTPRecipientsRefused:
            self._give_back(conn)  # the connection is fine, the message is not
            raise
        except BaseException:
            self._discard(conn)
            raise
        self._give_back(conn)
        return out

    def _error(self, exc: aiosmtplib.SMTPException) -> SmtpSendError:
        login = self.feed.current
        code = getattr(exc, "code", None)
        text = scrubbed_line(str(getattr(exc, "message", "") or exc), login.password)
        return SmtpSendError(
            f"SMTP send via {login.where} as {login.username} failed:"
            f" {type(exc).__name__}{f' {code}' if code else ''} {text[:200]}".rstrip(),
            code if isinstance(code, int) else None,
        )

    async def close(self) -> None:
        """Unsubscribe, QUIT every idle connection (those sending close when done)."""
        self._closed = True
        await self.feed.close()
        idle, self._idle = self._idle, []
        for c in idle:
            self._discard(c)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)


async def _login_once(smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
    """AUTH PLAIN or LOGIN, exactly once (``SMTP.login`` tries every mechanism in turn,
    and servers count each rejected try)."""
    if smtp.last_ehlo_response is None:
        await smtp.ehlo()  # connect() says EHLO only when it upgrades to TLS
    methods = smtp.supported_auth_methods
    if "plain" in methods:
        await smtp.auth_plain(username, password)
    elif "login" in methods:
        await smtp.auth_login(username, password)
    elif methods:
        await smtp.auth_crammd5(username, password)
    else:
        raise SmtpSendError(f"SMTP server {smtp.hostname}:{smtp.port} does not offer AUTH")


async def smtp_sender(
    service: VaultService,
    *,
    secret: str = "config",  # noqa: S107 - a secret's name
    tls: str = "auto",
    cafile: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - a limit for each SMTP command
    max_size: int = 4,
    max_lifetime: float = 300.0,
    max_idle: float = 60.0,
    client_name: str | None = None,
) -> SmtpSender:
    """An :class:`SmtpSender` over ``<mount>/data/<secret>`` that follows its rotation.

    Reads the secret now (errors propagate; ValueError when it holds no SMTP login);
    connections are opened on the first sends. ``client_name``: the EHLO name (default:
    this host's name).
    """
    feed: CredentialFeed[SmtpLogin] = CredentialFeed(
        service, f"{service.kv_mount}/data/{secret}", pick_login, name="smtp_sender"
    )
    sender = SmtpSender(
        feed,
        tls=tls,
        cafile=cafile,
        timeout=timeout,
        max_size=max_size,
        max_lifetime=max_lifetime,
        max_idle=max_idle,
        client_name=client_name,
    )
    await feed.start()
    feed.on_change(sender._drain_idle)
    return sender


__all__ = ["SmtpLogin", "SmtpSendError", "SmtpSender", "pick_login", "smtp_sender"]
