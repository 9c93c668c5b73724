"""The contract between the HTTP layer and the engines: one request method, a clock, settings.

The engines (``kv``, ``transit``, ``database``, ``auth``) and the lease container
build Vault API requests and read the answers; how a request is sent (pooling,
retries, HA redirects, the token) is :class:`~maily_secrets.vault.client.VaultClient`'s
business. They depend on :class:`Requester`, not on the client, so the client may
import them without an import cycle, and a test may hand them anything that sends
requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..clock import Clock
from ..errors import SecretNotFound
from ..settings import VaultSettings


@dataclass(frozen=True, slots=True)
class VaultResponse:
    status: int
    body: dict[str, Any] | None = field(repr=False)  # may hold secret data
    headers: Mapping[str, str] | None = field(default=None, repr=False)

    @property
    def data(self) -> dict[str, Any] | None:
        if self.body is None:
            return None
        d = self.body.get("data")
        return d if isinstance(d, dict) else None


class Requester(Protocol):
    """What an engine needs from the HTTP layer (``VaultClient`` is one)."""

    @property
    def settings(self) -> VaultSettings: ...

    @property
    def clock(self) -> Clock: ...

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
        """Send one API request (``path`` relative to ``/v1/``); raise a typed
        :class:`~maily_secrets.errors.VaultError` on failure. See ``VaultClient.request``."""
        ...


async def list_keys(requester: Requester, path: str) -> list[str]:
    """``LIST path``: the keys under it, ``[]`` when there are none (Vault answers 404)."""
    try:
        r = await requester.request("LIST", path)
    except SecretNotFound:
        return []
    keys = (r.data or {}).get("keys") or []
    return [str(k) for k in keys]
