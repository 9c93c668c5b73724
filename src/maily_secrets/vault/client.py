"""The HTTP layer: one pooled aiohttp session, retries, HA redirects and consistency.

Nothing here runs at import or construction time: the session is created on
the first request, inside the running event loop.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from yarl import URL

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    AuthFailed,
    ConfigurationError,
    OutcomeUnknown,
    PermissionDenied,
    SecretNotFound,
    VaultError,
    VaultRequestError,
    VaultUnavailable,
)
from ..observe import NOOP, Observer
from ..paths import validate_path
from ..settings import VaultSettings
from ..supervise import backoff_delay
from .auth import TokenManager, auth_from_settings
from .kv import KV2
from .policy import REDIRECT_STATUS, error_class, redirect_target, should_retry
from .requester import VaultResponse, list_keys
from .transport import (
    HANDSHAKE_FAILURE,
    AiohttpTransport,
    Request,
    Response,
    Transport,
    TransportError,
)

if TYPE_CHECKING:
    from .transit import Transit

__all__ = [
    "ClientClosed",
    "Consistency",
    "OutcomeUnknown",
    "VaultClient",
    "VaultResponse",
    "newer_index",
]

log = logging.getLogger("maily_secrets.vault")

Consistency = Literal["index", "forward", "none"]

_MAX_REDIRECTS = 3
_MAX_URLS = 4096


class ClientClosed(VaultError):
    """The client was closed; make a new one (a closed client never reopens by itself)."""


def _index_position(index: str) -> tuple[str, int] | None:
    """OpenBao's ``X-Vault-Index`` is base64 JSON ``{"cluster": ..., "value": "N"}``."""
    try:
        doc = json.loads(base64.b64decode(index + "=" * (-len(index) % 4)))
        return str(doc["cluster"]), int(doc["value"])
    except (ValueError, KeyError, TypeError):
        return None


def newer_index(current: str | None, new: str) -> str:
    """Keep the most advanced index: responses of concurrent writes arrive out of order."""
    if current is None or current == new:
        return new
    a, b = _index_position(current), _index_position(new)
    if a is not None and b is not None and a[0] == b[0] and a[1] > b[1]:
        return current
    return new


def _origin_text(location: str, current: URL) -> str:
    try:
        u = current.join(URL(location))
        return f"{u.scheme}://{u.host}:{u.port}"
    except (ValueError, TypeError):
        return "an unparseable address"


def _errors_of(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        text = "; ".join(str(e) for e in body["errors"])
    else:
        text = ""
    return text[:300]


def _ca_directory(capath: Path) -> str:
    """Every PEM file under ``capath`` (as the Vault CLI's VAULT_CAPATH: no hashed names
    needed; directories walked, hidden ones such as a Kubernetes volume's ``..data`` too)."""
    certs: list[str] = []
    for dirpath, _dirs, files in os.walk(capath):
        for name in sorted(files):
            path = Path(dirpath, name)
            try:
                text = path.read_text(encoding="ascii", errors="replace")
            except OSError as exc:
                raise ConfigurationError(
                    f"invalid configuration: VAULT_CAPATH: cannot read {path}"
                    f" ({exc.strerror or type(exc).__name__})",
                    variable="VAULT_CAPATH",
                ) from None
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ConfigurationError(
                    f"invalid configuration: VAULT_CAPATH: {path} holds no PEM certificate"
                    " (every file of the directory must be one, as for the Vault CLI)",
                    variable="VAULT_CAPATH",
                )
            certs.append(text)
    if not certs:
        raise ConfigurationError(
            f"invalid configuration: VAULT_CAPATH {capath} holds no certificate",
            variable="VAULT_CAPATH",
        )
    return "\n".join(certs)


def _no_passphrase() -> bytes:
    # Never OpenSSL's interactive prompt: a service has no terminal to ask on.
    raise ConfigurationError(
        "invalid configuration: VAULT_CLIENT_KEY is encrypted; give an unencrypted key"
        " (as for the Vault CLI), readable only by the service",
        variable="VAULT_CLIENT_KEY",
    )


def _load_client_cert(ctx: ssl.SSLContext, st: VaultSettings) -> None:
    try:
        ctx.load_cert_chain(str(st.client_cert), str(st.client_key), password=_no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        # The reason only (e.g. KEY_VALUES_MISMATCH), never the file's contents.
        why = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigurationError(
            f"invalid configuration: VAULT_CLIENT_CERT {st.client_cert} and VAULT_CLIENT_KEY"
            f" {st.client_key} cannot be loaded as a pair ({why})",
            variable="VAULT_CLIENT_CERT",
        ) from None


class VaultClient:
    """An async Vault API client.

    ``consistency`` (HA raft clusters): ``"index"`` sends the ``X-Vault-Index``
    of our most advanced write on later requests, so a lagging standby answers
    412/429 and we retry until it caught up; ``"forward"`` sends the index with
    ``X-Vault-Inconsistent: forward-active-node``, so a lagging standby forwards
    the request to the active node instead (OpenBao acts on that header only
    together with an index); ``"none"`` does neither.

    ``transport`` (default: pooled aiohttp, one session per event loop) and
    ``clock`` (default: the system's) are injectable; the rules the client applies
    (retry, redirect, error) are the pure functions of ``vault/policy.py``.
    A closed client raises :class:`ClientClosed`; it never reopens quietly.
    """

    def __init__(
        self,
        settings: VaultSettings | None = None,
        *,
        token_manager: TokenManager | None = None,
        consistency: Consistency = "index",
        transport: Transport | None = None,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings if settings is not None else VaultSettings()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.observer: Observer = observer or NOOP  # every HTTP attempt: metrics
        self._base = f"{self.settings.api_addr}/v1/"
        self._kv: KV2 | None = None
        self._urls: dict[str, URL] = {}  # path -> its parsed URL: the same few paths recur
        self._members = (self.settings.api_addr, *self.settings.cluster_members)
        self._transport: Transport = transport or AiohttpTransport(
            pool_size=self.settings.pool_size,
            timeout=self.settings.timeout,
            ssl_context=self._ssl,
            server_hostname=self.settings.tls_server_name,
        )
        self.tokens = token_manager or TokenManager(
            auth_from_settings(self.settings), self, clock=self.clock
        )
        self.consistency: Consistency = consistency
        self._index: str | None = None
        self.stats: Counter[str] = Counter()
        base_headers = {"Accept": "application/json"}
        if self.settings.namespace:
            base_headers["X-Vault-Namespace"] = self.settings.namespace
        if consistency == "forward":
            base_headers["X-Vault-Inconsistent"] = "forward-active-node"
        self._base_headers = base_headers
        self._closed = False

    def __repr__(self) -> str:
        return f"VaultClient(addr={self.settings.api_addr!r}, closed={self._closed})"

    # ------------------------------------------------------------------ lifecycle
    def _ssl(self) -> ssl.SSLContext | bool:
        """The TLS context of a new connection pool (read when a session is made)."""
        st = self.settings
        if st.skip_verify:
            log.warning("TLS certificate verification is disabled (VAULT_SKIP_VERIFY)")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif st.cacert:
            try:
                ctx = ssl.create_default_context(cafile=str(st.cacert))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"invalid configuration: VAULT_CACERT {st.cacert} cannot be"
                    f" loaded ({type(exc).__name__})",
                    variable="VAULT_CACERT",
                ) from None
        elif st.capath:
            ctx = ssl.create_default_context(cadata=_ca_directory(st.capath))
        elif st.client_cert is None:
            return True
        else:
            ctx = ssl.create_default_context()
        if st.client_cert is not None and st.client_key is not None:
            _load_client_cert(ctx, st)
        return ctx

    def _tls_failure(self, path: str, exc: TransportError) -> str:
        st = self.settings
        where = f"{st.api_addr} for {path!r}"
        if exc.rejected is not None:
            if st.client_cert is None and exc.rejected == HANDSHAKE_FAILURE:
                fix = (
                    "if the server requires a client certificate (tls_require_and_verify_"
                    "client_cert), set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (mutual TLS)"
                )
            elif st.client_cert is None:
                fix = (
                    "the server requires a client certificate: set VAULT_CLIENT_CERT and"
                    " VAULT_CLIENT_KEY (mutual TLS)"
                )
            else:
                fix = (
                    f"the server refused the client certificate {st.client_cert}"
                    " (VAULT_CLIENT_CERT): is it signed by a CA the listener trusts"
                    " (tls_client_ca_file), valid now, and for client auth?"
                )
            return f"TLS handshake with {where} failed ({exc.rejected}); {fix}"
        if exc.hostname_mismatch:
            name = st.tls_server_name
            fix = (
                f"VAULT_TLS_SERVER_NAME is {name!r}: set it to a name in the server's certificate"
                if name
                else "set VAULT_TLS_SERVER_NAME to a name in the server's certificate,"
                " or use that name in VAULT_ADDR"
            )
            return f"TLS verification of {where} failed ({exc.certificate}: {exc.detail}); {fix}"
        trust = "VAULT_CAPATH" if st.capath and not st.cacert else "VAULT_CACERT"
        return (
            f"TLS verification of {where} failed ({exc.certificate}); set {trust} to the CA"
            " that signed the server's certificate"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop token renewal and close the connection pool. Later requests raise."""
        self._closed = True
        try:
            await self.tokens.close()
        finally:
            await self._transport.close()

    async def __aenter__(self) -> VaultClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests
    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        authenticated: bool = True,
        token: str | None = None,
        retries: int | None = None,
        idempotent: bool | None = None,
    ) -> VaultResponse:
        """Send one API request with retries; raise a typed :class:`VaultError` on failure.

        ``path`` is relative to ``/v1/`` and is validated first. A request is resent
        only when that cannot apply it twice (``should_retry``); pass
        ``idempotent=True`` for a POST that may be resent (transit encrypt, login).
        """
        if self._closed:
            raise ClientClosed(f"the Vault client is closed; cannot send {path!r}", path=path)
        validate_path(path)
        max_retries = self.settings.max_retries if retries is None else retries
        # The state this request must see: fixed when it starts, so that a retry does
        # not chase indexes that concurrent writers produce meanwhile.
        index = self._index if self.consistency != "none" else None
        relogged = False
        attempt = 0
        url = self._urls.get(path)
        if url is None:
            url = self._url(path)
        while True:
            headers = dict(self._base_headers)
            used = ""
            if authenticated:
                if token:
                    used = token
                else:
                    # A valid token without an await; renewal or login only when due.
                    current = self.tokens.valid_now()
                    used = current if current is not None else await self.tokens.token()
                if used:  # "" : a Vault Agent's API proxy adds its own token
                    headers["X-Vault-Token"] = used
            if index is not None:
                headers["X-Vault-Index"] = index
            observer = self.observer
            timed = observer is not NOOP  # no clock reads for nobody
            sent = time.perf_counter() if timed else 0.0
            # One exchange, following a standby's redirects to the active node (same
            # method, body and token, only to the same origin or a cluster member).
            hop_url, hop_params = url, params
            hops = 0
            try:
                while True:
                    self.stats[method] += 1
                    resp = await self._transport.send(
                        Request(method, hop_url, headers, json_body, hop_params)
                    )
                    if resp.status in REDIRECT_STATUS and "Location" in resp.headers:
                        if hops == _MAX_REDIRECTS:
                            status, resp_headers = 508, None
                            body: Any = {"errors": ["too many redirects"]}
                            break
                        hops += 1
                        hop_url = self._redirect(resp, path)
                        hop_params = None  # the Location already carries the query string
                        continue
                    status, body, resp_headers = resp.status, resp.json(), resp.headers
                    break
            except TransportError as exc:
                if timed:
                    observer.vault_request(method, path, "error", time.perf_counter() - sent)
                if exc.certificate is not None or exc.rejected is not None:
                    # Not transient: retrying cannot fix a certificate that does not verify.
                    raise VaultUnavailable(self._tls_failure(path, exc), path=path) from None
                if attempt < max_retries and should_retry(
                    method, failure=exc.failure, idempotent=idempotent
                ):
                    await self._backoff(attempt, path, exc.cause)
                    attempt += 1
                    continue
                kind = OutcomeUnknown if exc.failure == "sent" else VaultUnavailable
                raise kind(
                    f"Vault at {self.settings.api_addr} unreachable for {path!r}: {exc.cause}"
                    f" after {attempt + 1} attempt(s)"
                    + (" (the request may have been applied)" if kind is OutcomeUnknown else ""),
                    path=path,
                ) from None
            if timed:
                observer.vault_request(method, path, str(status), time.perf_counter() - sent)

            if status < 400:
                if method != "GET" and resp_headers is not None:
                    idx = resp_headers.get("X-Vault-Index")
                    if idx:
                        self._index = newer_index(self._index, idx)
                return VaultResponse(status, body, resp_headers)

            detail = _errors_of(body)
            if attempt < max_retries and should_retry(
                method, status, detail=detail, idempotent=idempotent
            ):
                await self._backoff(attempt, path, f"HTTP {status}")
                attempt += 1
                continue
            if status == 403 and authenticated and token is None and not relogged:
                # An expired or revoked token: log in again once (if possible), then retry.
                relogged = True
                verdict = await self.tokens.handle_forbidden(used)
                if verdict == "retry":
                    continue
                if verdict == "dead":
                    raise AuthFailed(
                        f"the Vault token ({self.tokens.method.name} auth) is invalid, expired"
                        f" or revoked, and cannot be renewed by logging in again; {path!r}"
                        " was not read. Give a new token (VAULT_TOKEN, VAULT_TOKEN_FILE)"
                        " or use an auth method that can log in again",
                        path=path,
                        status=status,
                        detail=detail,
                    )
            raise self._error(status, body, path)

    def _url(self, path: str) -> URL:
        """The parsed URL of ``path``, kept: the same few paths recur."""
        url = URL(self._base + path)
        if len(self._urls) >= _MAX_URLS:
            self._urls.clear()
        self._urls[path] = url
        return url

    def _redirect(self, resp: Response, path: str) -> URL:
        """Where a standby's redirect points, if we may follow it (the same origin or a
        configured cluster member); else raise before the token is sent anywhere."""
        location = resp.headers["Location"]
        target = redirect_target(resp.url, location, self._members)
        if target is None:
            raise VaultRequestError(
                f"refused to follow a redirect for {path!r} (HTTP {resp.status}) to"
                f" {_origin_text(location, resp.url)}: not the same"
                " origin nor a configured cluster member (MAILY_SECRETS_CLUSTER_MEMBERS),"
                " or a downgrade from https; the token was not sent there",
                path=path,
                status=resp.status,
            )
        return target

    async def _backoff(self, attempt: int, path: str, cause: str) -> None:
        delay = backoff_delay(
            attempt, self.settings.retry_base_delay, self.settings.retry_max_delay
        )
        log.debug("retrying %s in %.3fs after %s", path, delay, cause)
        await self.clock.sleep(delay)

    def _error(self, status: int, body: Any, path: str) -> VaultError:
        detail = _errors_of(body)
        where = f"{path!r}"
        kind = error_class(status, detail)
        if kind is SecretNotFound:
            return SecretNotFound(
                f"secret {where} not found", path=path, status=status, detail=detail
            )
        if kind is PermissionDenied:
            return PermissionDenied(
                f"permission denied for {where}"
                + (f" (Vault: {detail})" if detail and detail != "permission denied" else "")
                + "; check the token's policies and the path",
                path=path,
                status=status,
                detail=detail,
            )
        if kind is VaultUnavailable:
            return VaultUnavailable(
                f"Vault answered HTTP {status} for {where}" + (f": {detail}" if detail else ""),
                path=path,
                status=status,
                detail=detail,
            )
        if kind is not VaultRequestError:
            return kind(
                f"check-and-set conflict writing {where}: {detail}",
                path=path,
                status=status,
                detail=detail,
            )
        return VaultRequestError(
            f"Vault rejected the request for {where} (HTTP {status})"
            + (f": {detail}" if detail else ""),
            path=path,
            status=status,
            detail=detail,
        )

    # ------------------------------------------------------------------ conveniences
    async def read(self, path: str, params: Mapping[str, str] | None = None) -> VaultResponse:
        return await self.request("GET", path, params=params)

    async def write(self, path: str, data: Mapping[str, Any] | None = None) -> VaultResponse:
        return await self.request("POST", path, json_body=data or {})

    async def delete(self, path: str) -> VaultResponse:
        return await self.request("DELETE", path)

    async def list(self, path: str) -> list[str]:
        return await list_keys(self, path)

    @property
    def kv(self) -> KV2:
        kv = self._kv
        if kv is None:
            kv = self._kv = KV2(self)
        return kv

    def transit(self, mount: str | None = None) -> Transit:
        from .transit import Transit  # loaded when first used, not with every client

        return Transit(self, mount or self.settings.transit_mount)
