"""The HTTP layer: one pooled aiohttp session, retries, HA redirects and consistency.

Nothing here runs at import or construction time: the session is created on
the first request, inside the running event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..errors import (
    CheckAndSetConflict,
    PermissionDenied,
    SecretNotFound,
    VaultError,
    VaultRequestError,
    VaultUnavailable,
)
from ..paths import validate_path
from ..settings import VaultSettings
from .auth import TokenManager, auth_from_settings

log = logging.getLogger("maily_secrets.vault")

Consistency = Literal["index", "forward", "none"]

_RETRY_STATUS = frozenset({412, 429, 500, 502, 503, 504})  # 5xx except 501, plus 412/429
_REDIRECT_STATUS = frozenset({307, 308})
_MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class VaultResponse:
    status: int
    body: dict[str, Any] | None
    headers: CIMultiDictProxy[str] | None = None

    @property
    def data(self) -> dict[str, Any] | None:
        if self.body is None:
            return None
        d = self.body.get("data")
        return d if isinstance(d, dict) else None


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


def _errors_of(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        text = "; ".join(str(e) for e in body["errors"])
    else:
        text = ""
    return text[:300]


class VaultClient:
    """An async Vault API client.

    ``consistency`` (HA raft clusters): ``"index"`` sends the ``X-Vault-Index``
    of our most advanced write on later requests, so a lagging standby answers
    412/429 and we retry until it caught up; ``"forward"`` sends the index with
    ``X-Vault-Inconsistent: forward-active-node``, so a lagging standby forwards
    the request to the active node instead (OpenBao acts on that header only
    together with an index); ``"none"`` does neither.
    """

    def __init__(
        self,
        settings: VaultSettings | None = None,
        *,
        token_manager: TokenManager | None = None,
        consistency: Consistency = "index",
    ) -> None:
        self.settings = settings if settings is not None else VaultSettings()
        self._base = f"{self.settings.addr}/v1/"
        self._session: aiohttp.ClientSession | None = None
        self._session_lock: asyncio.Lock | None = None
        self.tokens = token_manager or TokenManager(auth_from_settings(self.settings), self)
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

    # ------------------------------------------------------------------ lifecycle
    def _ssl(self) -> ssl.SSLContext | bool:
        if self.settings.skip_verify:
            log.warning("TLS certificate verification is disabled (VAULT_SKIP_VERIFY)")
            return False
        if self.settings.cacert:
            return ssl.create_default_context(cafile=str(self.settings.cacert))
        return True

    async def session(self) -> aiohttp.ClientSession:
        s = self._session
        if s is not None and not s.closed:
            return s
        if self._session_lock is None:
            self._session_lock = asyncio.Lock()
        async with self._session_lock:
            if self._session is None or self._session.closed:
                connector = aiohttp.TCPConnector(
                    limit=self.settings.pool_size, ssl=self._ssl(), ttl_dns_cache=60
                )
                self._session = aiohttp.ClientSession(
                    connector=connector,
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                    json_serialize=json.dumps,
                )
                self._closed = False
            return self._session

    async def close(self) -> None:
        """Stop token renewal and close the connection pool. The client may be used again."""
        await self.tokens.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._closed = True

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
    ) -> VaultResponse:
        """Send one API request with retries; raise a typed :class:`VaultError` on failure.

        ``path`` is relative to ``/v1/`` and is validated first.
        """
        validate_path(path)
        max_retries = self.settings.max_retries if retries is None else retries
        # The state this request must see: fixed when it starts, so that a retry does
        # not chase indexes that concurrent writers produce meanwhile.
        index = self._index if self.consistency != "none" else None
        relogged = False
        attempt = 0
        while True:
            headers = dict(self._base_headers)
            used = ""
            if authenticated:
                used = headers["X-Vault-Token"] = token or await self.tokens.token()
            if index is not None:
                headers["X-Vault-Index"] = index
            try:
                status, body, resp_headers = await self._send(
                    method, self._base + path, headers, json_body, params
                )
            except aiohttp.ClientConnectorCertificateError as exc:
                # Not transient: retrying cannot fix a certificate that does not verify.
                raise VaultUnavailable(
                    f"TLS verification of {self.settings.addr} failed for {path!r}"
                    f" ({type(exc.certificate_error).__name__}); set VAULT_CACERT to the CA"
                    " that signed the server's certificate",
                    path=path,
                ) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause = type(exc).__name__
                if attempt < max_retries:
                    await self._backoff(attempt, path, cause)
                    attempt += 1
                    continue
                raise VaultUnavailable(
                    f"Vault at {self.settings.addr} unreachable for {path!r}: {cause}"
                    f" after {attempt + 1} attempt(s)",
                    path=path,
                ) from None

            if status < 400:
                if method != "GET" and resp_headers is not None:
                    idx = resp_headers.get("X-Vault-Index")
                    if idx:
                        self._index = newer_index(self._index, idx)
                return VaultResponse(status, body, resp_headers)

            if status in _RETRY_STATUS and attempt < max_retries:
                await self._backoff(attempt, path, f"HTTP {status}")
                attempt += 1
                continue
            if status == 403 and authenticated and token is None and not relogged:
                # An expired or revoked token: log in again once, then retry.
                relogged = True
                if await self.tokens.handle_forbidden(used):
                    continue
            raise self._error(status, body, path)

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        json_body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
    ) -> tuple[int, Any, CIMultiDictProxy[str] | None]:
        session = await self.session()
        for _hop in range(_MAX_REDIRECTS + 1):
            self.stats[method] += 1
            async with session.request(
                method, url, headers=headers, json=json_body, params=params, allow_redirects=False
            ) as resp:
                if resp.status in _REDIRECT_STATUS and "Location" in resp.headers:
                    # A standby pointing us at the active node: same method, body and token.
                    url = str(resp.url.join(URL(resp.headers["Location"])))
                    params = None  # the Location already carries the query string
                    continue
                if resp.status == 204:
                    return resp.status, None, resp.headers
                raw = await resp.read()
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                return resp.status, body, resp.headers
        return 508, {"errors": ["too many redirects"]}, None

    async def _backoff(self, attempt: int, path: str, cause: str) -> None:
        cap = min(self.settings.retry_max_delay, self.settings.retry_base_delay * (2**attempt))
        delay = random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not crypto
        log.debug("retrying %s in %.3fs after %s", path, delay, cause)
        await asyncio.sleep(delay)

    def _error(self, status: int, body: Any, path: str) -> VaultError:
        detail = _errors_of(body)
        where = f"{path!r}"
        if status == 404:
            return SecretNotFound(
                f"secret {where} not found", path=path, status=status, detail=detail
            )
        if status == 403:
            return PermissionDenied(
                f"permission denied for {where}"
                + (f" (Vault: {detail})" if detail and detail != "permission denied" else "")
                + "; check the token's policies and the path",
                path=path,
                status=status,
                detail=detail,
            )
        if status in _RETRY_STATUS or status >= 500:
            return VaultUnavailable(
                f"Vault answered HTTP {status} for {where}" + (f": {detail}" if detail else ""),
                path=path,
                status=status,
                detail=detail,
            )
        if "check-and-set" in detail:
            return CheckAndSetConflict(
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
        try:
            r = await self.request("LIST", path)
        except SecretNotFound:
            return []
        keys = (r.data or {}).get("keys") or []
        return [str(k) for k in keys]

    @property
    def kv(self) -> KV2:
        return KV2(self)

    def transit(self, mount: str | None = None) -> Transit:
        return Transit(self, mount or self.settings.transit_mount)


# (circular: the engines use VaultClient for typing only)
from .kv import KV2  # noqa: E402
from .transit import Transit  # noqa: E402
