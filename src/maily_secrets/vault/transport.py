"""Transports: how one HTTP exchange with Vault happens.

The client decides (retries, redirects, errors: ``vault/policy.py``); a transport
only sends one request and returns one response, or raises :class:`TransportError`
saying whether the request may have reached the server (``failure="sent"``) or
certainly did not (``failure="connect"``).

- :class:`AiohttpTransport` is the real one: a pooled ``aiohttp`` session per event
  loop. A session belongs to the loop it was made in, so code that runs each call
  in a new loop (``asyncio.run`` per request: Django views, Celery tasks, scripts)
  gets a fresh session on the new loop instead of "Event loop is closed".
- :class:`MockTransport` calls a function of yours: for unit tests of the retry and
  redirect policies only (tests that claim a feature works use a real server).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
from yarl import URL

Failure = Literal["connect", "sent"]


@dataclass(slots=True)
class Request:
    method: str
    url: URL
    headers: dict[str, str] = field(repr=False)  # carries the token
    json_body: Mapping[str, Any] | None = field(default=None, repr=False)
    params: Mapping[str, str] | None = field(default=None, repr=False)


@dataclass(slots=True)
class Response:
    status: int
    url: URL
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            # Vault answers UTF-8: decoding here spares json's encoding detection
            return json.loads(self.body.decode())
        except ValueError:  # UnicodeDecodeError is one
            return None


class TransportError(Exception):
    """No HTTP answer. ``failure`` says whether the request may have been processed."""

    def __init__(
        self,
        failure: Failure,
        cause: str,
        *,
        certificate: str | None = None,
        rejected: str | None = None,
        hostname_mismatch: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(cause)
        self.failure: Failure = failure
        self.cause = cause
        self.certificate = certificate  # set when we could not verify the server's certificate
        self.rejected = rejected  # the TLS alert when the server refused our (missing) client cert
        self.hostname_mismatch = hostname_mismatch  # the certificate is not for that name
        self.detail = detail  # OpenSSL's verify message (names, never secrets)


class Transport(Protocol):
    async def send(self, request: Request) -> Response: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """One pooled ``aiohttp.ClientSession`` per event loop."""

    def __init__(
        self,
        *,
        pool_size: int = 100,
        timeout: float = 10.0,
        ssl_context: Callable[[], ssl.SSLContext | bool] = lambda: True,
        server_hostname: str | None = None,
    ) -> None:
        self._pool_size = pool_size
        self._server_hostname = server_hostname
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()
        # The session of the loop that sent last: one identity check per request. (Held
        # weakly: a finished loop is not kept alive by the transport.)
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], aiohttp.ClientSession] | None
        self._last = None

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop and not last[1].closed:
            return last[1]
        s = self._sessions.get(loop)
        if s is not None and not s.closed:
            self._last = (weakref.ref(loop), s)
            return s
        self._forget_dead_loops()
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ssl=self._ssl_context(), ttl_dns_cache=60
        )
        s = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
        )
        self._sessions[loop] = s
        self._last = (weakref.ref(loop), s)
        return s

    def _forget_dead_loops(self) -> None:
        for loop, s in list(self._sessions.items()):
            if loop.is_closed():
                # Its loop is gone (asyncio.run returned): nothing can await the close.
                _drop(s)
                del self._sessions[loop]

    async def send(self, request: Request) -> Response:
        session = self._session()
        body = None
        headers = request.headers
        if request.json_body is not None:
            body = json.dumps(request.json_body).encode()
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with session.request(
                request.method,
                request.url,
                headers=headers,
                data=body,
                params=request.params,
                allow_redirects=False,
                server_hostname=self._server_hostname if request.url.scheme == "https" else None,
            ) as resp:
                raw = b"" if resp.status == 204 else await resp.read()
                return Response(resp.status, resp.url, resp.headers, raw)
        except aiohttp.ClientConnectorCertificateError as exc:
            err = exc.certificate_error
            code = getattr(err, "verify_code", None)
            raise TransportError(
                "connect",
                type(exc).__name__,
                certificate=type(err).__name__,
                hostname_mismatch=code in _NAME_MISMATCH,
                detail=str(getattr(err, "verify_message", "") or "")[:200],
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # TLS 1.2: a server that refuses our (missing) client certificate says so here.
            raise TransportError(
                "connect", type(exc).__name__, rejected=_client_cert_alert(exc)
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            alert = _client_cert_alert(exc)
            if alert is not None:
                # The server's TLS layer refused us: nothing reached Vault (TLS 1.3 reports
                # it only once the request is written, so it looks like "sent" otherwise).
                raise TransportError("connect", type(exc).__name__, rejected=alert) from None
            # Sent, or partly sent: the server may have processed it.
            raise TransportError("sent", type(exc).__name__) from None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = None
        s = self._sessions.pop(loop, None)
        if s is not None and not s.closed:
            await s.close()
        self._forget_dead_loops()


# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = frozenset({62, 64})
HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"
# TLS alerts a server sends when it requires a client certificate, or refuses ours.
_CLIENT_CERT_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        # TLS 1.2 (Go's listener with no client certificate): ambiguous, worded so.
        HANDSHAKE_FAILURE,
    }
)


def _client_cert_alert(exc: BaseException) -> str | None:
    """The reason of an ``ssl.SSLError`` in ``exc``'s chain that says the server refused
    our client certificate (or its absence), else ``None``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        reason = getattr(cur, "reason", None) if isinstance(cur, ssl.SSLError) else None
        if reason is not None:  # (aiohttp's ClientConnectorSSLError is an SSLError without one)
            return reason if reason in _CLIENT_CERT_ALERTS else None
        os_error = getattr(cur, "os_error", None)  # aiohttp's connector errors hold it here
        if isinstance(os_error, ssl.SSLError) and id(os_error) not in seen:
            cur = os_error
            continue
        cur = cur.__cause__ or cur.__context__
    return None


def _drop(session: aiohttp.ClientSession) -> None:
    """Forget a session whose loop is closed, closing its sockets without that loop."""
    connector = session.connector
    session.detach()
    if connector is None:
        return
    conns = getattr(connector, "_conns", None) or {}
    for items in list(conns.values()):
        for item in items:
            proto = item[0] if isinstance(item, tuple) else item
            transport = getattr(proto, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            raw = getattr(sock, "_sock", sock)  # asyncio wraps it in a TransportSocket
            if raw is not None:
                with contextlib.suppress(Exception):
                    raw.close()
    with contextlib.suppress(Exception):
        connector._closed = True  # no "Unclosed connector" warning for what we closed


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class MockTransport:
    """Answers every request with ``handler(request)`` (a function or a coroutine function).

    ``handler`` may raise :class:`TransportError` to simulate a connection that failed
    before (``"connect"``) or after (``"sent"``) the request went out. ``requests``
    records what was sent (headers included, for asserting where a token went).
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.closed = False

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        out = self._handler(request)
        if inspect.isawaitable(out):
            out = await out
        assert isinstance(out, Response)
        return out

    async def close(self) -> None:
        self.closed = True


def json_response(
    status: int, doc: Any = None, *, url: str = "http://vault.test:8200/", **headers: str
) -> Response:
    """A :class:`Response` with a JSON body, for :class:`MockTransport` handlers."""
    body = b"" if doc is None else json.dumps(doc).encode()
    return Response(status, URL(url), dict(headers), body)
