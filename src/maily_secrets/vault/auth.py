"""Authentication: token, Kubernetes, AppRole and TLS certificates, behind one token manager.

The :class:`TokenManager` hands out a valid token to every request.  It logs in
at most once at a time however many callers wait, renews the token once
``renew_fraction`` (2/3 by default) of its TTL has passed, and logs in again
when the token expired or Vault answered 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AuthFailed, VaultError
from ..settings import VaultSettings
from ..supervise import backoff_delay, supervised

if TYPE_CHECKING:
    from .requester import Requester

log = logging.getLogger("maily_secrets.auth")


@dataclass(slots=True)
class Token:
    value: str = field(repr=False)
    ttl: float  # seconds; 0 = never expires (root token)
    renewable: bool
    obtained: float  # monotonic time
    keep: bool = False  # renewal impossible: use as is until it expires
    retry_after: float = 0.0  # after a failed renewal (Vault down), try again from then

    def renew_at(self, fraction: float) -> float | None:
        if self.ttl <= 0 or self.keep:
            return None
        return max(self.obtained + self.ttl * fraction, self.retry_after)

    def expires_at(self) -> float | None:
        return None if self.ttl <= 0 else self.obtained + self.ttl


class AuthMethod(Protocol):
    name: str

    @property
    def can_relogin(self) -> bool:
        """Whether a fresh login may produce a different, valid token."""
        ...

    async def login(self, client: Requester) -> Token: ...


def _read_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise AuthFailed(f"cannot read {what} from {path}: {exc.strerror or exc}") from None
    if not value:
        raise AuthFailed(f"{what} file {path} is empty")
    return value


def _token_from_auth(body: dict[str, Any] | None, method: str, client: Requester) -> Token:
    auth = (body or {}).get("auth") or {}
    value = auth.get("client_token")
    if not value:
        raise AuthFailed(f"{method} login returned no client token")
    return Token(
        value=str(value),
        ttl=float(auth.get("lease_duration") or 0),
        renewable=bool(auth.get("renewable")),
        obtained=client.clock.monotonic(),
    )


async def _lookup_self(client: Requester, value: str, method: str) -> Token:
    try:
        r = await client.request("GET", "auth/token/lookup-self", token=value)
    except VaultError as exc:
        if exc.status == 403:
            raise AuthFailed(f"{method}: the token is invalid, expired or revoked") from None
        raise
    data = r.data or {}
    return Token(
        value=value,
        ttl=float(data.get("ttl") or 0),
        renewable=bool(data.get("renewable")),
        obtained=client.clock.monotonic(),
    )


async def _login(
    client: Requester,
    method: str,
    mount: str,
    body: dict[str, Any],
    *,
    refused: str,
    hint: str,
) -> Token:
    """POST ``auth/<mount>/login``; a 400/403 is :class:`AuthFailed` saying ``refused``
    and ``hint`` (never the credentials)."""
    try:
        r = await client.request(
            "POST",
            f"auth/{mount}/login",
            json_body=body,
            authenticated=False,
            idempotent=True,  # a second login only makes a second token
        )
    except VaultError as exc:
        if exc.status in (400, 403):
            raise AuthFailed(
                f"{refused} was refused"
                f" (HTTP {exc.status}: {exc.detail or 'no reason given'}); {hint}",
                status=exc.status,
            ) from None
        raise
    return _token_from_auth(r.body, method, client)


class TokenAuth:
    """A token from ``VAULT_TOKEN``, a token file (re-read on re-login) or ``~/.vault-token``."""

    name = "token"

    def __init__(self, token: str | None = None, token_file: Path | None = None) -> None:
        if token is None and token_file is None:
            raise AuthFailed("token auth needs a token or a token file")
        self._token = token
        self._file = token_file

    @property
    def can_relogin(self) -> bool:
        return self._file is not None  # an agent may have written a new token

    async def login(self, client: Requester) -> Token:
        value = self._token if self._file is None else _read_file(self._file, "Vault token")
        assert value is not None
        return await _lookup_self(client, value, f"token ({self.source})")

    @property
    def source(self) -> str:
        return str(self._file) if self._file is not None else "VAULT_TOKEN"


class KubernetesAuth:
    """Service-account JWT -> ``auth/<mount>/login`` with a role."""

    name = "kubernetes"
    can_relogin = True

    def __init__(self, role: str, jwt_path: Path, mount: str = "kubernetes") -> None:
        self.role, self.jwt_path, self.mount = role, jwt_path, mount

    async def login(self, client: Requester) -> Token:
        jwt = _read_file(self.jwt_path, "Kubernetes service-account token")
        return await _login(
            client,
            "kubernetes",
            self.mount,
            {"role": self.role, "jwt": jwt},
            refused=f"kubernetes login as role {self.role!r} at auth/{self.mount}",
            hint="check the role's bound service accounts and the JWT",
        )


class AppRoleAuth:
    """role-id + secret-id (from the environment or files) -> ``auth/<mount>/login``."""

    name = "approle"
    can_relogin = True

    def __init__(
        self,
        *,
        role_id: str | None = None,
        role_id_file: Path | None = None,
        secret_id: str | None = None,
        secret_id_file: Path | None = None,
        mount: str = "approle",
    ) -> None:
        if role_id is None and role_id_file is None:
            raise AuthFailed("approle auth needs VAULT_ROLE_ID or VAULT_ROLE_ID_FILE")
        self._role_id, self._role_id_file = role_id, role_id_file
        self._secret_id, self._secret_id_file = secret_id, secret_id_file
        self.mount = mount

    async def login(self, client: Requester) -> Token:
        role_id = self._role_id or _read_file(self._role_id_file, "AppRole role-id")  # type: ignore[arg-type]
        body = {"role_id": role_id}
        if self._secret_id is not None:
            body["secret_id"] = self._secret_id
        elif self._secret_id_file is not None:
            body["secret_id"] = _read_file(self._secret_id_file, "AppRole secret-id")
        return await _login(
            client,
            "approle",
            self.mount,
            body,
            refused=f"approle login at auth/{self.mount}",
            hint="check the role-id and secret-id",
        )


class CertAuth:
    """TLS certificate auth: the client certificate of the connection (VAULT_CLIENT_CERT)
    is the credential; ``auth/<mount>/login`` with an optional role ``name``."""

    name = "cert"
    can_relogin = True

    def __init__(self, client_cert: Path | None, role: str | None = None, mount: str = "cert"):
        if client_cert is None:
            raise AuthFailed(
                "cert auth needs a client certificate: set VAULT_CLIENT_CERT and VAULT_CLIENT_KEY"
            )
        self.client_cert, self.role, self.mount = client_cert, role, mount

    async def login(self, client: Requester) -> Token:
        as_role = f" as role {self.role!r}" if self.role else ""
        return await _login(
            client,
            "cert",
            self.mount,
            {"name": self.role} if self.role else {},
            refused=f"cert login{as_role} at auth/{self.mount} with {self.client_cert}",
            hint="check that a cert role there (VAULT_CERT_ROLE) trusts the CA of"
            " VAULT_CLIENT_CERT and allows its names",
        )


def auth_from_settings(settings: VaultSettings) -> AuthMethod:
    """Pick the auth method: explicit ``auth_method``, else the first credential found.

    ``auto`` order: ``VAULT_TOKEN``, ``VAULT_TOKEN_FILE``, AppRole ids, then, with
    ``VAULT_AGENT_ADDR`` set, no token at all (the agent's API proxy adds its
    auto-auth token), else the Kubernetes service-account token file, a client
    certificate (``VAULT_CLIENT_CERT``: cert auth), ``~/.vault-token``. A certificate
    used only for mutual TLS never shadows a credential found before it;
    ``VAULT_AUTH_METHOD=cert`` picks cert auth in a pod.
    """
    m = settings.auth_method
    token = settings.token.get_secret_value() if settings.token else None
    approle_given = settings.role_id is not None or settings.role_id_file is not None
    home_token = Path(os.path.expanduser("~/.vault-token"))

    def approle() -> AppRoleAuth:
        return AppRoleAuth(
            role_id=settings.role_id.get_secret_value() if settings.role_id else None,
            role_id_file=settings.role_id_file,
            secret_id=settings.secret_id.get_secret_value() if settings.secret_id else None,
            secret_id_file=settings.secret_id_file,
            mount=settings.approle_mount,
        )

    def kubernetes() -> KubernetesAuth:
        return KubernetesAuth(
            settings.role, settings.kubernetes_jwt_path, settings.kubernetes_mount
        )

    if m == "token" or (m == "auto" and (token or settings.token_file)):
        if token:
            return TokenAuth(token=token)
        if settings.token_file:
            return TokenAuth(token_file=settings.token_file)
        if home_token.is_file():
            return TokenAuth(token_file=home_token)
        raise AuthFailed(
            "auth method 'token' but no VAULT_TOKEN, VAULT_TOKEN_FILE or ~/.vault-token"
        )
    if m == "approle" or (m == "auto" and approle_given):
        return approle()
    if m == "auto" and settings.agent_addr is not None:
        return AgentProxyAuth(settings.agent_addr)
    if m == "kubernetes" or (m == "auto" and settings.kubernetes_jwt_path.is_file()):
        return kubernetes()
    if m == "cert" or (m == "auto" and settings.client_cert is not None):
        return CertAuth(settings.client_cert, settings.cert_role, settings.cert_mount)
    if home_token.is_file():
        return TokenAuth(token_file=home_token)
    return _NoAuth()


class AgentProxyAuth:
    """No credentials of our own: requests go without a token to a Vault Agent whose
    API proxy adds its auto-auth token (``api_proxy { use_auto_auth_token = true }``).

    The agent logs in and renews; there is nothing to renew here (ttl 0).
    """

    name = "agent"
    can_relogin = False

    def __init__(self, agent_addr: str) -> None:
        self.agent_addr = agent_addr

    async def login(self, client: Requester) -> Token:
        return Token(value="", ttl=0, renewable=False, obtained=client.clock.monotonic())


class _NoAuth:
    name = "none"
    can_relogin = False

    async def login(self, client: Requester) -> Token:
        raise AuthFailed(
            "no Vault credentials: set VAULT_TOKEN, VAULT_TOKEN_FILE,"
            " VAULT_ROLE_ID/VAULT_SECRET_ID, VAULT_CLIENT_CERT/VAULT_CLIENT_KEY (cert auth),"
            " or run in Kubernetes with a service-account token"
        )


Verdict = Literal["retry", "denied", "dead"]


class TokenManager:
    """Holds the current token; single-flight login, renewal at a fraction of the TTL.

    The renewal runs in the background under :func:`~maily_secrets.supervise.supervised`
    (a crash is logged and the loop restarted) with capped backoff while Vault is
    down. Its lock belongs to the event loop that uses it: a process that runs each
    call in a new loop (``asyncio.run`` per request) gets a new lock on the new loop.
    """

    def __init__(
        self, method: AuthMethod, client: Requester, *, clock: Clock | None = None
    ) -> None:
        self.method = method
        self._client = client
        self.clock: Clock = clock or getattr(client, "clock", None) or SYSTEM_CLOCK
        self._token: Token | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._renew_failures = 0
        self.logins = 0
        self.renewals = 0

    def __repr__(self) -> str:
        return f"TokenManager(method={self.method.name!r}, has_token={self._token is not None})"

    @property
    def fraction(self) -> float:
        return self._client.settings.renew_fraction

    def valid_now(self) -> str | None:
        """The token now if it needs no renewal (no await: the common case of every
        request), else ``None``: then :meth:`token` renews or logs in."""
        t = self._token
        if t is None:
            return None
        renew_at = t.renew_at(self._client.settings.renew_fraction)
        if renew_at is None or self.clock.monotonic() < renew_at:
            return t.value
        return None

    async def token(self) -> str:
        value = self.valid_now()
        if value is not None:
            return value
        return (await self._refresh()).value

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _refresh(self, force_login: bool = False, stale: Token | None = None) -> Token:
        async with self._loop_lock():
            t = self._token
            if t is not None and t is not stale:
                if force_login or not self._due(t):
                    return t  # fresh, or somebody else refreshed while we waited
            if t is not None and not force_login and not self._expired(t):
                if t.renewable:
                    renewed = await self._renew(t)
                    if renewed is not None:
                        return renewed
                if not self.method.can_relogin:
                    # Neither renewable nor replaceable: use it while it lasts.
                    t.keep = True
                    return t
            return await self._login()

    def _due(self, t: Token) -> bool:
        renew_at = t.renew_at(self.fraction)
        return renew_at is not None and self.clock.monotonic() >= renew_at

    def _expired(self, t: Token) -> bool:
        exp = t.expires_at()
        return exp is not None and self.clock.monotonic() >= exp

    async def _login(self) -> Token:
        token = await self.method.login(self._client)
        self.logins += 1
        self._token = token
        self._observed(token)
        log.info(
            "vault login ok",
            extra={"auth_method": self.method.name, "ttl": token.ttl, "renewable": token.renewable},
        )
        self._schedule_renewal()
        return token

    async def _renew(self, t: Token) -> Token | None:
        """Renew ``t``; ``None`` means "log in again instead"."""
        try:
            # No retries: a refused renewal (e.g. past the max TTL, HTTP 500) is
            # answered by a fresh login, not by waiting.
            r = await self._client.request(
                "POST",
                "auth/token/renew-self",
                json_body={},
                token=t.value,
                retries=0,
                idempotent=True,
            )
        except VaultError as exc:
            log.warning(
                "vault token renewal failed",
                extra={"auth_method": self.method.name, "error": type(exc).__name__},
            )
            if exc.status == 403 or self.method.can_relogin:
                return None
            # Vault unreachable: keep the token while it lasts, try again later
            # (capped backoff: any length of outage is survived).
            self._renew_failures += 1
            t.retry_after = self.clock.monotonic() + backoff_delay(self._renew_failures, 1.0, 30.0)
            return t
        self._renew_failures = 0
        new = _token_from_auth(r.body, "renew-self", self._client)
        # Vault caps renewals at the token's max TTL: when the renewal gained
        # little, a fresh login (if possible) gives a full TTL.
        if self.method.can_relogin and t.ttl > 0 and new.ttl < t.ttl * (1 - self.fraction):
            return None
        self.renewals += 1
        self._token = new
        self._observed(new)
        log.info("vault token renewed", extra={"auth_method": self.method.name, "ttl": new.ttl})
        self._schedule_renewal()
        return new

    def _observed(self, t: Token) -> None:
        observer = getattr(self._client, "observer", None)  # the client's metrics, if any
        if observer is not None:
            observer.token_issued(t.expires_at(), self.clock)

    async def handle_forbidden(self, used: str) -> Verdict:
        """After a 403 with token ``used``: what the request should do.

        A 403 means either "this token may not do that" or "this token is dead".
        Only the second is cured by logging in again, so the token is checked first
        (``lookup-self``). ``"denied"``: the token is alive, a real permission
        problem (the caller raises PermissionDenied, no login). ``"retry"``: a fresh
        token is in place. ``"dead"``: the token is dead and no re-login is possible
        (the caller raises AuthFailed). A failed re-login raises AuthFailed.
        """
        stale = self._token
        if self.method.can_relogin and stale is not None and stale.value != used:
            return "retry"  # somebody already replaced the token we used
        try:
            await self._client.request("GET", "auth/token/lookup-self", token=used, retries=0)
            return "denied"  # the token is alive: a real permission problem
        except VaultError as exc:
            if exc.status != 403:
                return "denied"
        if not self.method.can_relogin:
            return "dead"
        await self._refresh(force_login=True, stale=stale)
        return "retry"

    def _schedule_renewal(self) -> None:
        t = self._token
        if t is None or t.renew_at(self.fraction) is None:
            return
        if self._renewer is None or self._renewer.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._renewer = None
                return
            self._renewer = loop.create_task(
                supervised("vault token renewal", self._renew_loop, clock=self.clock, logger=log)
            )

    async def _renew_loop(self) -> None:
        """Background renewal so that an idle process keeps a live token."""
        failures = 0
        while True:
            t = self._token
            renew_at = t.renew_at(self.fraction) if t else None
            if renew_at is None:
                return
            await self.clock.sleep(max(0.05, renew_at - self.clock.monotonic()))
            if self._token is not t:
                continue
            try:
                await self._refresh()
                failures = 0
            except VaultError as exc:
                failures += 1
                log.warning(
                    "background token refresh failed",
                    extra={"error": type(exc).__name__, "failures": failures},
                )
                await self.clock.sleep(backoff_delay(failures, 1.0, 30.0))

    def renewal_stopped(self) -> bool:
        """The background renewal was cancelled from outside (``close()`` is not that)."""
        task = self._renewer
        return task is not None and task.cancelled()

    def current(self) -> Token | None:
        return self._token

    async def close(self) -> None:
        task, self._renewer = self._renewer, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
        self._token = None
