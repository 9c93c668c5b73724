"""Redis passwords, rotated with zero downtime through an ACL user with two passwords.

A Redis ACL user may hold several passwords at once. The application logs in as
one ACL user (``acl_user``, default ``maily``; ``ensure_redis_acl_user`` creates
it), and during the grace period that user accepts both the previous and the new
password, so whatever password a client read from Vault, it can log in.

One rotation:

1. ``create_pending``  a new random password (URL/DSN-safe);
2. ``apply``           as the rotator's admin, ``ACL SETUSER <user> #<sha256>``: the
                       password is sent as its SHA-256 (which is all Redis stores
                       anyway), so the plaintext never reaches Redis' ``MONITOR``
                       stream, ``SLOWLOG`` or ``ACL LOG``; the previous password stays.
                       A disabled (``off``) or ``nopass`` user is refused, not changed;
3. ``verify``          a new connection ``AUTH <user> <new password>`` + ``PING``;
4. ``promote``         ``redis_password`` (and ``redis_username``) of the consumer secret,
                       by a check-and-set read-modify-write (other keys are kept).

After the grace period ``retire`` removes the previous password
(``ACL SETUSER <user> !<sha256>``), never the one the consumer secret names.
``rollback`` removes the new one. Every step is idempotent: it looks at the
user's password hashes (``ACL GETUSER``) before changing them.

Options (``types.redis.options``)::

    acl_user: maily                        # the application's ACL user (not "default")
    admin_secret: rotator/redis-admin      # optional: host, port, username, password
                                           # (+ optional tls); without it the rotator
                                           # connects to redis_host/redis_port of the
                                           # consumer secret as the default user, with no
                                           # password (a Redis without requirepass)
    username_key: redis_username           # optional; null: do not write the user name
    tls: false                             # optional, for every connection
    connect_timeout: 5                     # optional, seconds
    password_length: 32                    # optional, 16..256
    persist: acl_save                      # optional: acl_save (ACL SAVE when Redis has an
                                           # aclfile), config_rewrite, none

The admin needs the ``ACL`` command (``+acl``); it must be another user than
``acl_user``. Redis replicates no ACL changes: with replicas or a cluster every
node needs the same change (one rotator run per node is not implemented here).

Adopting a Redis that so far used ``requirepass`` / the default user::

    await ensure_redis_acl_user(admin_redis, "maily", password=<config's redis_password>)
    # then add redis_username: maily to the consumer secret (and to the app's template)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, ClassVar

import redis.asyncio as aioredis
from pydantic import BeforeValidator, SecretStr
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from ...errors import PermissionDenied, SecretNotFound, VaultError
from ...targets import random_password
from ...targets.redis import (
    ACL_USER_NAME,
    DEFAULT_ACL_USER,
    SHA256_HEX,
    AclUser,
    RedisTarget,
    connect,
    get_acl_user,
    password_rule,
    password_sha256,
    redis_command,
    scrub,
)
from ..base import RotationContext, RotationError, Rotator, RotatorConfigError
from ..kit import (
    Flag,
    PasswordLength,
    RotatorOptions,
    Seconds,
    SecretName,
    admin_secret,
    in_use,
    one_of,
    promote_fields,
)

DEFAULT_USERNAME_KEY = "redis_username"
PASSWORD_KEY = "redis_password"  # noqa: S105 - a key name
HOST_KEY, PORT_KEY = "redis_host", "redis_port"
PERSIST_MODES = ("acl_save", "config_rewrite", "none")
_NO_ACLFILE = "not configured to use an acl file"


# ---------------------------------------------------------------------------- options
def _acl_user(value: object) -> str:
    if not isinstance(value, str) or not ACL_USER_NAME.fullmatch(value):
        raise ValueError("must be an ACL user name (letters, digits, _ . : -)")
    if value == "default":
        raise ValueError(
            "must not be 'default': give the application an ACL user of its"
            " own (ensure_redis_acl_user)"
        )
    return value


def _key_name(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError("must be a key name or null")
    return value


class RedisOptions(RotatorOptions):
    error_prefix: ClassVar[str] = "redis {step}"

    acl_user: Annotated[str, BeforeValidator(_acl_user)] = DEFAULT_ACL_USER
    admin_secret: SecretName | None = None
    username_key: Annotated[str | None, BeforeValidator(_key_name)] = DEFAULT_USERNAME_KEY
    tls: Flag = False
    connect_timeout: Seconds = 5.0
    password_length: PasswordLength = 32
    persist: Annotated[str, one_of(*PERSIST_MODES)] = "acl_save"


def _port(value: object) -> int | None:
    try:
        port = int(str(value))
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _endpoint(data: Mapping[str, Any]) -> tuple[str, int] | None:
    """redis_host/redis_port of the consumer secret (None when there is no host)."""
    host = data.get(HOST_KEY)
    if not host:
        return None
    port = _port(data.get(PORT_KEY, 6379))
    return (str(host), port) if port else None


async def _close(conn: aioredis.Redis) -> None:
    """Close a connection; a failure to close is not the rotation's problem."""
    with contextlib.suppress(RedisError, OSError):
        await conn.aclose()


# ---------------------------------------------------------------------------- the rotator
class RedisAclRotator(Rotator):
    """``redis``: a second password on the application's ACL user, then switch to it."""

    type_name = "redis"
    two_slots = True

    # -- reading Vault ---------------------------------------------------------------
    async def _admin(
        self, ctx: RotationContext, opts: RedisOptions, consumer: Mapping[str, Any], step: str
    ) -> RedisTarget:
        if opts.admin_secret is None:
            if consumer.get(HOST_KEY) and _endpoint(consumer) is None:
                raise RotatorConfigError(
                    f"redis {step}: {PORT_KEY} of {ctx.secret_path().data} is not a port number"
                )
            ep = _endpoint(consumer) or ("127.0.0.1", 6379)
            return RedisTarget(ep[0], ep[1], tls=opts.tls)
        path = ctx.secret_path(opts.admin_secret)
        data = await admin_secret(ctx, opts.admin_secret, step)
        problems: list[str] = []
        app = _endpoint(consumer)
        host = data.get("host") or (app[0] if app else None)
        port = _port(data.get("port") or (app[1] if app else 6379))
        if not host:
            problems.append("lacks host")
        if port is None:
            problems.append("has a port that is not a port number")
        username, password = data.get("username") or None, data.get("password") or None
        if username and not password:
            problems.append("has a username but no password")
        if username == opts.acl_user:
            problems.append(
                f"names the application's user {opts.acl_user} as admin (rotating it would"
                " lock the rotator out)"
            )
        tls = data.get("tls", opts.tls)
        if problems:
            raise RotatorConfigError(
                f"redis {step}: the admin secret {path.data} {'; '.join(problems)}"
            )
        assert port is not None
        return RedisTarget(
            host=str(host),
            port=port,
            username=str(username) if username else None,
            password=SecretStr(str(password)) if password else None,
            tls=bool(tls),
        )

    # -- talking to Redis ------------------------------------------------------------
    @asynccontextmanager
    async def _admin_conn(
        self, admin: RedisTarget, opts: RedisOptions, step: str
    ) -> AsyncIterator[aioredis.Redis]:
        secret = admin.password.get_secret_value() if admin.password else None
        who = admin.username or "default"
        conn = connect(admin, admin.username, secret, timeout=opts.connect_timeout)
        try:
            try:
                await conn.ping()
            except RedisError as exc:
                raise RotationError(
                    f"redis {step}: cannot connect to {admin.describe()} as the rotator admin"
                    f" ({who}): {type(exc).__name__}: {scrub(str(exc), secret)}"
                ) from None
            try:
                yield conn
            except RedisError as exc:
                raise RotationError(
                    f"redis {step}: Redis {admin.describe()} refused ({who}):"
                    f" {type(exc).__name__}: {scrub(str(exc), secret)}"
                ) from None
        finally:
            await _close(conn)

    async def _user(
        self,
        conn: aioredis.Redis,
        admin: RedisTarget,
        opts: RedisOptions,
        step: str,
        *,
        require_enabled: bool = False,
    ) -> AclUser:
        user = await get_acl_user(conn, opts.acl_user)
        if user is None:
            raise RotatorConfigError(
                f"redis {step}: ACL user {opts.acl_user} does not exist on {admin.describe()}"
                " (create it with ensure_redis_acl_user)"
            )
        if user.nopass:
            raise RotatorConfigError(
                f"redis {step}: ACL user {opts.acl_user} on {admin.describe()} is 'nopass':"
                " adding a password would lock out the clients that log in without one"
            )
        if require_enabled and not user.enabled:
            raise RotatorConfigError(
                f"redis {step}: ACL user {opts.acl_user} on {admin.describe()} is disabled"
                " ('off'); refusing to enable it (ACL SETUSER <user> on, if it should be)"
            )
        return user

    async def _persist(
        self, ctx: RotationContext, conn: aioredis.Redis, admin: RedisTarget, opts: RedisOptions
    ) -> None:
        if opts.persist == "none":
            return
        if opts.persist == "config_rewrite":
            await redis_command(conn, "CONFIG", "REWRITE")
            return
        try:
            await redis_command(conn, "ACL", "SAVE")
        except ResponseError as exc:
            if _NO_ACLFILE not in str(exc).lower():
                raise
            ctx.log.warning(
                "redis: %s has no ACL file; the ACL change lives in memory until the users"
                " are saved (persist: config_rewrite, or an aclfile)",
                admin.describe(),
            )

    async def _change_passwords(
        self,
        ctx: RotationContext,
        step: str,
        pending_or_retiring: Mapping[str, Any],
        *,
        add: str | None = None,
        remove: str | None = None,
    ) -> bool:
        """Add / remove one password hash of the ACL user; False when nothing changed."""
        opts = RedisOptions.of(ctx, step)
        consumer, _ = await ctx.read_secret(step=step)
        admin = await self._admin(ctx, opts, consumer, step)
        user_name = str(pending_or_retiring.get("user") or opts.acl_user)
        if user_name != opts.acl_user:
            raise RotatorConfigError(
                f"redis {step}: this rotation was for ACL user {user_name}, but acl_user is"
                f" now {opts.acl_user}"
            )
        async with self._admin_conn(admin, opts, step) as conn:
            user = await self._user(conn, admin, opts, step, require_enabled=add is not None)
            rules: list[str] = []
            if add is not None and add not in user.password_hashes:
                rules = [password_rule("#", add)]
            if remove is not None and remove in user.password_hashes:
                rules = [password_rule("!", remove)]
            if not rules:
                return False
            await redis_command(conn, "ACL", "SETUSER", opts.acl_user, *rules)
            await self._persist(ctx, conn, admin, opts)
        return True

    # -- the protocol ----------------------------------------------------------------
    async def check(self, ctx: RotationContext) -> None:
        opts, problems = RedisOptions.problems(ctx.options)
        consumer_path = ctx.secret_path()
        consumer: dict[str, Any] | None = None
        try:
            consumer = dict((await ctx.client.kv.read(consumer_path)).data)
        except SecretNotFound:
            problems.append(f"the consumer secret {consumer_path.data} does not exist")
        except PermissionDenied:
            problems.append(f"this token may not read the consumer secret {consumer_path.data}")
        if consumer is not None:
            if consumer.get(HOST_KEY) and _endpoint(consumer) is None:
                problems.append(f"{PORT_KEY} of {consumer_path.data} is not a port number")
            if opts is not None and opts.username_key:
                have = consumer.get(opts.username_key)
                if have != opts.acl_user:
                    problems.append(
                        f"{opts.username_key} of {consumer_path.data} is"
                        f" {'missing' if have is None else repr(have)}, not the ACL user"
                        f" {opts.acl_user!r}: the application logs in as another user, and"
                        " switching it to this one must be done first (ensure_redis_acl_user"
                        f" with its current password, then set {opts.username_key})"
                    )
        admin: RedisTarget | None = None
        if opts is not None and consumer is not None:
            try:
                admin = await self._admin(ctx, opts, consumer, "check")
            except RotatorConfigError as exc:
                problems.append(str(exc).removeprefix("redis check: "))
        if problems or opts is None or admin is None:
            raise RotatorConfigError(f"redis rotation cannot start: {'; '.join(problems)}")
        try:
            async with self._admin_conn(admin, opts, "check") as conn:
                await self._user(conn, admin, opts, "check", require_enabled=True)
        except RotatorConfigError as exc:
            raise RotatorConfigError(
                f"redis rotation cannot start: {str(exc).removeprefix('redis check: ')}"
            ) from None
        except RotationError as exc:
            raise RotatorConfigError(str(exc)) from None

    async def describe(self, ctx: RotationContext) -> str:
        opts, problems = RedisOptions.problems(ctx.options)
        if opts is None:
            return f"cannot rotate redis: {'; '.join(problems)}"
        try:
            consumer, _ = await ctx.read_secret(step="describe")
            admin = await self._admin(ctx, opts, consumer, "describe")
        except (RotationError, VaultError) as exc:
            return f"cannot rotate redis: {exc}"
        return (
            f"add a new password to ACL user {opts.acl_user} on {admin.describe()}, point"
            f" {PASSWORD_KEY} of {ctx.secret_path().data} at it, remove the previous one"
            f" after the grace period ({ctx.grace})"
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts = RedisOptions.of(ctx, "create_pending")
        consumer, _ = await ctx.read_secret(step="create_pending")
        password = random_password(opts.password_length)
        previous = consumer.get(PASSWORD_KEY)
        return {
            "user": opts.acl_user,
            "password": password,
            "password_sha256": password_sha256(password),
            "previous_sha256": password_sha256(str(previous)) if previous else None,
        }

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        digest = str(pending["password_sha256"])
        changed = await self._change_passwords(ctx, "apply", pending, add=digest)
        ctx.log.info(
            "redis: new password added to the ACL user",
            extra={"user": pending.get("user"), "step": "apply", "changed": changed},
        )

    async def verify(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        opts = RedisOptions.of(ctx, "verify")
        consumer, _ = await ctx.read_secret(step="verify")
        user, password = str(pending["user"]), str(pending["password"])
        # where the application connects (the consumer secret), else where the admin does
        ep = _endpoint(consumer)
        target = (
            RedisTarget(ep[0], ep[1], tls=opts.tls)
            if ep
            else await self._admin(ctx, opts, consumer, "verify")
        )
        conn = connect(target, user, password, timeout=opts.connect_timeout)
        where = f"{user}@{target.describe()}"
        try:
            try:
                await conn.ping()
            except NoPermissionError:
                # logged in (AUTH passed) but may not PING: the credential works
                ctx.log.warning("redis: %s may not run PING", where)
        except RedisError as exc:
            raise RotationError(
                f"redis verify: login as {where} failed: {type(exc).__name__}:"
                f" {scrub(str(exc), password)}"
            ) from None
        finally:
            await _close(conn)
        ctx.log.info("redis: new password works", extra={"user": user, "host": target.host})

    async def promote(self, ctx: RotationContext, pending: dict[str, Any]) -> int:
        opts = RedisOptions.of(ctx, "promote")
        user, password = str(pending["user"]), str(pending["password"])
        allowed = (pending.get("previous_sha256"), str(pending["password_sha256"]))

        def not_stale(cur: dict[str, Any]) -> None:
            have = cur.get(PASSWORD_KEY)
            if (password_sha256(str(have)) if have else None) not in allowed:
                raise RotationError(
                    f"redis promote: {PASSWORD_KEY} of {ctx.secret_path().data} changed during"
                    " the rotation; this pending password is stale"
                )

        fields = {
            PASSWORD_KEY: password,
            **({opts.username_key: user} if opts.username_key else {}),
        }
        return await promote_fields(
            ctx,
            fields,
            check=not_stale,
            message="consumer secret holds the new password",
            extra={"user": user},
        )

    async def rollback(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        """Remove the new password from the user (unless the consumer secret names it)."""
        digest = str(pending["password_sha256"])
        consumer, _ = await ctx.read_secret(step="rollback")
        if consumer.get(PASSWORD_KEY) == pending.get("password"):
            raise RotationError(
                f"redis rollback: {ctx.secret_path().data} already holds the new password;"
                " refusing to remove it"
            )
        changed = await self._change_passwords(ctx, "rollback", pending, remove=digest)
        ctx.log.info(
            "redis: pending password removed",
            extra={"user": pending.get("user"), "changed": changed},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        previous = pending.get("previous_sha256")
        if not previous or previous == pending.get("password_sha256"):
            return None
        return {"user": pending["user"], "password_sha256": previous}

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> None:
        """Remove the previous password, never the one the consumer secret holds."""
        digest = str(retiring.get("password_sha256") or "")
        if not SHA256_HEX.fullmatch(digest):
            raise RotationError("redis retire: the retiring record holds no password hash")
        if await in_use(
            ctx,
            "retire",
            PASSWORD_KEY,
            lambda current: password_sha256(str(current)) == digest,
            unknown="not removing any password",
            what="password",
            extra={"user": retiring.get("user")},
        ):
            return
        changed = await self._change_passwords(ctx, "retire", retiring, remove=digest)
        ctx.log.info(
            "redis: previous password removed",
            extra={"user": retiring.get("user"), "changed": changed},
        )
