"""A boto3 session whose access key follows the rotation of the ``aws`` type.

    session = await adapters.aws_session(vault_service)          # maily/data/credentials["aws"]
    s3 = session.client("s3")                                     # build clients once
    await asyncio.to_thread(s3.list_buckets)                      # signed with the current key

The session's credentials are a botocore :class:`~botocore.credentials.Credentials`
whose :meth:`get_frozen_credentials` (what botocore's signer asks for every request)
returns the access key the secret holds *now*. A secret listener swaps it when the
rotation promotes a new key, so every request signed after that uses the new key,
in every client made from the session: no client is rebuilt, and a request in flight
keeps the key it was signed with (the previous key works until the rotation retires it
at the end of the grace period, long after the adapter switched).

A request AWS refuses because its key is gone (``InvalidClientTokenId``: the rotation
retired the key before the listener reported the promote, e.g. while Vault was out of
reach) is retried once, at once, with a newer key: the one the listener has by now, or
the one a fresh read of the secret gives (at most one read per second). Only for calls
made off the event loop's thread (``asyncio.to_thread``, a thread pool), which is how a
blocking boto3 call belongs in an asyncio service anyway.

The secret layout is the ``aws`` rotator's (``rotation/rotators/aws.py``): a mapping
(``key``, default ``aws``) of ``aws_access_key``, ``aws_secret_key`` and optionally
``aws_session_token`` and ``aws_region``. A new version without a usable key (half
written, a field missing) is logged and skipped: the session keeps the key it has.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..targets.aws_iam import AwsCreds, creds_from_mapping, silence_wire_debug
from ._feed import CredentialFeed

if TYPE_CHECKING:
    from ..service import VaultService

try:
    import boto3  # type: ignore[import-untyped]
    import botocore.session  # type: ignore[import-untyped]
    from botocore.credentials import (  # type: ignore[import-untyped]
        CredentialProvider,
        CredentialResolver,
        Credentials,
        ReadOnlyCredentials,
    )
except ImportError as exc:  # pragma: no cover - boto3 is a dependency of the [aws] extra
    raise ImportError("adapters.aws_session needs boto3: pip install 'maily-secrets[aws]'") from exc

METHOD = "maily-secrets"
#: AWS's answers for a key it does not accept (deleted, deactivated, unknown)
REFUSED = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "InvalidAccessKeyId", "AuthFailure"}
)
REFRESH_AFTER = 1.0  # seconds between two re-reads of the secret after a refusal
REFRESH_TIMEOUT = 10.0


@dataclass(frozen=True)
class AwsKey:
    """What the session signs with: the access key and the region of the mapping."""

    creds: AwsCreds
    region: str | None = field(default=None, compare=False)


def _picker(key: str) -> Any:
    def pick(secret: dict[str, Any]) -> AwsKey:
        mapping = secret.get(key)
        if not isinstance(mapping, dict):
            raise ValueError(f"no {key!r} mapping")
        creds = creds_from_mapping(mapping)
        if creds is None:
            raise ValueError(f"the {key!r} mapping has no aws_access_key and aws_secret_key")
        region = mapping.get("aws_region")
        return AwsKey(creds, region if isinstance(region, str) and region else None)

    return pick


class FollowingCredentials(Credentials):  # type: ignore[misc]
    """botocore credentials that are always the key in the secret (never in a repr).

    ``get_frozen_credentials()`` is called by botocore's signer for each request: it
    returns the current key and counts the signature against its generation. Reads
    are one attribute load of an immutable tuple, safe from any thread.
    """

    def __init__(self, creds: AwsCreds, generation: int) -> None:
        # not Credentials.__init__: access_key/secret_key/token are properties here
        self.method = METHOD
        self.account_id = None
        self._now: tuple[AwsCreds, int] = (creds, generation)
        self._lock = threading.Lock()
        self._signing = threading.local()  # the generation this thread last signed with
        self.signed: dict[int, int] = {}  # generation -> requests signed

    def __repr__(self) -> str:
        creds, gen = self._now
        return f"<FollowingCredentials {creds.access_key_id} generation={gen}>"

    def switch(self, creds: AwsCreds, generation: int) -> None:
        self._now = (creds, generation)

    @property
    def access_key(self) -> str:
        return self._now[0].access_key_id

    @property
    def secret_key(self) -> str:
        return self._now[0].secret_access_key

    @property
    def token(self) -> str | None:
        return self._now[0].session_token

    @property
    def generation(self) -> int:
        return self._now[1]

    def signed_generation(self) -> int | None:
        """The generation of the key this thread's last request was signed with."""
        gen: int | None = getattr(self._signing, "gen", None)
        return gen

    def get_frozen_credentials(self) -> Any:
        creds, gen = self._now
        self._signing.gen = gen
        with self._lock:
            self.signed[gen] = self.signed.get(gen, 0) + 1
        return ReadOnlyCredentials(
            creds.access_key_id, creds.secret_access_key, creds.session_token, None
        )


class _Provider(CredentialProvider):  # type: ignore[misc]
    """The only provider of the session's resolver: no default chain behind it."""

    METHOD = METHOD
    CANONICAL_NAME = "MailySecrets"

    def __init__(self, creds: FollowingCredentials) -> None:
        super().__init__()
        self._creds = creds

    def load(self) -> FollowingCredentials:
        return self._creds


class AwsSession(boto3.Session):  # type: ignore[misc]
    """A :class:`boto3.Session` signing with the key of the secret, whatever it is now.

    ``generation`` counts the keys seen (1 at start); ``stats()`` says how many requests
    were signed with each; ``await close()`` unsubscribes (clients keep the last key).
    """

    def __init__(
        self, feed: CredentialFeed[AwsKey], creds: FollowingCredentials, region: str | None
    ) -> None:
        core = botocore.session.Session()
        core.register_component("credential_provider", CredentialResolver([_Provider(creds)]))
        super().__init__(botocore_session=core, region_name=region)
        self.feed = feed
        self.credentials = creds
        self.switched_at: list[float] = []  # time.monotonic() of each switch
        self.refreshes = 0  # re-reads of the secret after a refused key
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._refresh_lock = asyncio.Lock()
        self._last_read = -REFRESH_AFTER
        core.register("needs-retry", self._on_retry)  # before botocore's own retry handler

    def __repr__(self) -> str:
        return (
            f"<AwsSession {self.feed.path!r} key={self.credentials.access_key}"
            f" generation={self.feed.generation}>"
        )

    @property
    def generation(self) -> int:
        return self.feed.generation

    # -- a key refused: the rotation may have retired it before the listener told us --------
    def _on_retry(self, response: Any = None, attempts: int = 0, **kw: Any) -> float | None:
        """botocore's ``needs-retry``: AWS refused the key of this request (deleted,
        deactivated) on the first attempt. If the session has a newer key, or a fresh read
        of the secret gives one, retry once at once (botocore signs each attempt anew);
        else leave the decision to botocore's retry handler."""
        if attempts != 1 or not isinstance(response, tuple) or len(response) != 2:
            return None
        code = ((response[1] or {}).get("Error") or {}).get("Code")
        if code not in REFUSED:
            return None
        signed = self.credentials.signed_generation()
        if signed is not None and self.feed.generation > signed:
            return 0.0  # the listener moved on since this request was signed
        if threading.get_ident() == self._loop_thread:
            return None  # a blocking call on the event loop: it cannot wait for a read
        future = asyncio.run_coroutine_threadsafe(self._refresh(signed), self._loop)
        try:
            moved = future.result(timeout=REFRESH_TIMEOUT)
        except Exception:  # Vault unreachable, loop closed: the refusal stands
            future.cancel()
            return None
        return 0.0 if moved else None

    async def _refresh(self, signed: int | None) -> bool:
        """Read the secret from Vault (at most once per REFRESH_AFTER seconds); True when
        the session now has a newer key than the one ``signed`` with."""
        async with self._refresh_lock:
            if signed is None or self.feed.generation <= signed:
                now = time.monotonic()
                if now - self._last_read >= REFRESH_AFTER:
                    self._last_read = now
                    self.refreshes += 1
                    service, path = self.feed.service, self.feed.path
                    service.invalidate(path)
                    await self.feed._changed(await service.get_secret(path))
            return signed is not None and self.feed.generation > signed

    @property
    def access_key_id(self) -> str:
        """The key id requests are signed with now (not a secret)."""
        return str(self.credentials.access_key)

    def stats(self) -> dict[str, Any]:
        with self.credentials._lock:
            signed = dict(self.credentials.signed)
        return {
            "generation": self.feed.generation,
            "access_key_id": self.access_key_id,
            "signed_per_generation": signed,
            "refreshes": self.refreshes,
        }

    async def close(self) -> None:
        await self.feed.close()


async def aws_session(
    service: VaultService,
    *,
    secret: str = "credentials",  # noqa: S107 - a secret's name
    key: str = "aws",
    region: str | None = None,
) -> AwsSession:
    """A boto3 session over ``<mount>/data/<secret>[key]`` that follows its rotation.

    ``region``: else the mapping's ``aws_region``, else boto3's own configuration.
    Raises what reading the secret raises, or ValueError when it holds no usable key.
    """

    silence_wire_debug()  # botocore's DEBUG wire logs may hold a secret
    feed: CredentialFeed[AwsKey] = CredentialFeed(
        service, f"{service.kv_mount}/data/{secret}", _picker(key), name="aws_session"
    )
    first = await feed.start()
    try:
        creds = FollowingCredentials(first.creds, feed.generation)
        session = AwsSession(feed, creds, region or first.region)
    except BaseException:
        await feed.close()
        raise

    def changed(new: AwsKey, generation: int) -> None:
        creds.switch(new.creds, generation)
        session.switched_at.append(time.monotonic())

    feed.on_change(changed)
    return session


__all__ = ["AwsKey", "AwsSession", "FollowingCredentials", "aws_session"]
