"""JWT signing key rotation: the key set in the config secret (see ``maily_secrets.jwt_keys``).

The "target system" is the key set itself, so the steps are all check-and-set
writes of the consumer secret (``types.jwt.secret``, ``maily/data/config``), each
keeping every other key of that secret as it is:

- ``create_pending``  a new key id (sortable by time) and a new 64-byte secret;
- ``apply``           publish the new key for VERIFICATION only (``jwt_next_key``).
                      Every instance accepts tokens with the new kid as soon as it
                      sees this version, before any instance signs with it; with
                      ``options.propagation`` (e.g. ``90s``: the consumers' cache TTL /
                      listener interval) apply waits that long after publishing, so
                      that when promote lets the first instance sign with the new key,
                      all the others already accept it. Consumers that verify through
                      ``VaultService.get_jwt_verification_keys(kid=...)`` re-read the
                      config for an unknown kid and need no wait;
- ``verify``          sign a token with the pending key and verify it with the key set
                      as it is now (published) and as it will be after promotion, and
                      check that a token of the current key still verifies after it;
- ``promote``         the pending key signs (``jwt_secret``/``jwt_kid``); the old one
                      moves to ``jwt_previous_keys`` with ``verify_until`` = now + grace
                      (+ propagation: instances that have not seen the promotion yet
                      still sign with it); expired previous keys are dropped;
- ``rollback``        unpublish the pending key (the current key never changed);
- ``retire``          drop previous keys whose ``verify_until`` has passed.

Every step is idempotent: promote does not write when ``jwt_kid`` already is the
pending key id, apply when it is already published, retire when nothing expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from ... import jwt_keys as jk
from ..base import RotationContext, RotationError, Rotator, RotatorConfigError
from ..config import format_duration
from ..kit import Delay, RotatorOptions, cas_update


class JwtOptions(RotatorOptions):
    propagation: Delay = 0.0


def _propagation(ctx: RotationContext) -> timedelta:
    return timedelta(seconds=JwtOptions.of(ctx, "options").propagation)


def _pending_key(pending: dict[str, Any]) -> jk.SigningKey:
    kid, secret = pending.get("kid"), pending.get("secret")
    if not isinstance(kid, str) or not kid or not isinstance(secret, str) or not secret:
        raise RotationError("the pending JWT key is incomplete (no kid or secret)")
    return jk.SigningKey(kid, secret)


class JwtRotator(Rotator):
    type_name: ClassVar[str] = "jwt"

    async def _read(self, ctx: RotationContext) -> dict[str, Any]:
        return (await ctx.read_secret())[0]

    async def _update(
        self,
        ctx: RotationContext,
        step: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        kid: object,
        said: tuple[str, str | None],
    ) -> tuple[int, bool]:
        """``change`` the key set (CAS); log key ``kid`` with ``said`` (written, or not:
        None logs nothing). Returns (version, written)."""

        def checked(data: dict[str, Any]) -> dict[str, Any] | None:
            try:
                return change(data)
            except jk.JwtKeyError as exc:
                raise RotationError(
                    f"{step}: the JWT key set in {ctx.secret_path().data}: {exc}"
                ) from None

        version, wrote = await cas_update(ctx, step, checked)
        if wrote or said[1] is not None:
            ctx.log.info(
                "JWT key %s %s",
                kid,
                said[0] if wrote else said[1],
                extra={"type": ctx.type_name, "kid": kid, "version": version},
            )
        return version, wrote

    # ------------------------------------------------------------------ protocol
    async def check(self, ctx: RotationContext) -> None:
        _propagation(ctx)
        data = await self._read(ctx)
        try:
            jk.verification_keys(data, ctx.now())
        except jk.JwtKeyError as exc:
            raise RotatorConfigError(
                f"the JWT key set in {ctx.secret_path().data}: {exc}"
            ) from None

    async def describe(self, ctx: RotationContext) -> str:
        data = await self._read(ctx)
        try:
            cur = jk.current_signing_key(data)
            n = sum(1 for p in jk.previous_keys(data) if p.verify_until > ctx.now())
        except jk.JwtKeyError as exc:
            return f"cannot rotate: the JWT key set in {ctx.secret_path().data}: {exc}"
        return (
            f"new JWT signing key in {ctx.secret_path().data}: key {cur.kid} stops signing"
            f" and verifies for {format_duration(ctx.grace + _propagation(ctx))} more"
            f" ({n} older key(s) still verifying)"
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        data = await self._read(ctx)
        try:
            replaces = jk.current_signing_key(data).kid
        except jk.JwtKeyError as exc:
            raise RotatorConfigError(
                f"the JWT key set in {ctx.secret_path().data}: {exc}"
            ) from None
        return {"kid": jk.new_kid(ctx.now()), "secret": jk.new_secret(), "replaces": replaces}

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        key = _pending_key(pending)
        wait = _propagation(ctx)
        published_at: list[datetime] = []

        def publish(cur: dict[str, Any]) -> dict[str, Any] | None:
            published_at.clear()
            if cur.get(jk.KID_KEY) == key.kid:
                return None  # promoted already
            nxt = jk.next_key(cur)
            if nxt is not None and nxt.kid == key.kid:
                if nxt.secret != key.secret:
                    raise RotationError(
                        f"apply: {jk.NEXT_KEY} has key id {key.kid} with another secret"
                    )
                raw = cur[jk.NEXT_KEY].get("published_at")
                try:
                    published_at.append(jk.parse_time(raw))
                except ValueError:
                    published_at.append(ctx.now())
                return None  # published already (a resumed rotation)
            now = ctx.now()
            published_at.append(now)
            return jk.with_next_key(cur, key, now)

        said = ("published for verification", "was already published for verification")
        await self._update(ctx, "apply", publish, key.kid, said)
        if published_at and wait > timedelta(0):
            remaining = (published_at[0] + wait - ctx.now()).total_seconds()
            if remaining > 0:
                ctx.log.info(
                    "waiting %.0fs for every instance to see the new JWT key",
                    remaining,
                    extra={"type": ctx.type_name, "kid": key.kid},
                )
                await asyncio.sleep(remaining)

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        key = _pending_key(pending)
        data = await self._read(ctx)
        now = ctx.now()
        try:
            current = jk.current_signing_key(data)
            if current.kid == key.kid:
                if current.secret != key.secret:
                    raise RotationError(
                        f"verify: {jk.KID_KEY} is the pending key id with another secret"
                    )
                before, old = data, None  # promoted already: check the key set as it is
            else:
                nxt = jk.next_key(data)
                if nxt is None or nxt.kid != key.kid:
                    raise RotationError(
                        f"verify: the pending key {key.kid} is not published in"
                        f" {ctx.secret_path().data} ({jk.NEXT_KEY}); apply did not complete"
                    )
                if nxt.secret != key.secret:
                    raise RotationError(
                        f"verify: the published key {key.kid} has another secret than the"
                        " pending one"
                    )
                before, old = data, current
            after = jk.promoted(data, key, now, ctx.grace + _propagation(ctx))
            claims = {"sub": "maily-secrets-rotation-check", "jti": ctx.rotation_id}
            token = jk.sign(after, claims, 60, now=now)
            if jk.token_kid(token) != key.kid:
                raise RotationError("verify: a token signed after promotion lacks the new kid")
            for name, config in (("now", before), ("after promotion", after)):
                got = jk.verify(config, token, now)
                if got.get("jti") != ctx.rotation_id:
                    raise RotationError(f"verify: claims differ when verified {name}")
            if old is not None and ctx.grace + _propagation(ctx) > timedelta(0):
                old_token = jk.sign(before, claims, 60, now=now)
                jk.verify(after, old_token, now)
        except jk.JwtKeyError as exc:
            raise RotationError(f"verify: the JWT key set: {exc}") from None
        except jk.JwtVerificationError as exc:
            raise RotationError(f"verify: a check token was refused: {exc}") from None
        ctx.log.info("JWT key %s verified", key.kid, extra={"type": ctx.type_name, "kid": key.kid})

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        key = _pending_key(pending)
        verify_for = ctx.grace + _propagation(ctx)

        def change(cur: dict[str, Any]) -> dict[str, Any] | None:
            current = jk.current_signing_key(cur)
            if current.kid == key.kid:
                if current.secret != key.secret:
                    raise RotationError(
                        f"promote: {jk.KID_KEY} is the pending key id with another secret"
                    )
                return None  # promoted already
            if any(p.kid == key.kid for p in jk.previous_keys(cur)):
                return None  # promoted, then superseded by a later rotation
            return jk.promoted(cur, key, ctx.now(), verify_for)

        said = ("now signs", "was already promoted")
        version, _ = await self._update(ctx, "promote", change, key.kid, said)
        return version

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        kid = pending.get("kid")

        def unpublish(cur: dict[str, Any]) -> dict[str, Any] | None:
            nxt = cur.get(jk.NEXT_KEY)
            if not isinstance(nxt, dict) or nxt.get("kid") != kid:
                return None
            return jk.without_next_key(cur)

        await self._update(ctx, "rollback", unpublish, kid, ("unpublished", None))

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        replaces = pending.get("replaces")
        return {"kid": replaces, "replaced_by": pending.get("kid")} if replaces else None

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        now = ctx.now()
        still: list[jk.PreviousKey] = []

        def drop(cur: dict[str, Any]) -> dict[str, Any] | None:
            still[:] = [
                p
                for p in jk.previous_keys(cur)
                if p.kid == retiring.get("kid") and p.verify_until > now
            ]
            return jk.without_expired(cur, now)

        await self._update(
            ctx, "retire", drop, retiring.get("kid"), ("retirement: expired keys removed", None)
        )
        if still:
            # e.g. options.propagation lengthens the window beyond the engine's grace
            raise RotationError(
                f"retire: key {still[0].kid} verifies until {jk.iso(still[0].verify_until)};"
                " it is removed by a run after that"
            )
