"""Redis passwords, rotated with zero downtime: two alternating ACL users, or one ACL
user with two passwords.

**Two users** (``acl_users: [maily, maily_b]``, the built-in config's choice): the
application logs in as one of two ACL users with the same permissions
(``ensure_redis_acl_user`` creates them; ``bootstrap.ensure_redis_rotation`` both), the
way the ``database`` type flips between two PostgreSQL login roles. Because each
credential is its own user, Redis can tell who still uses the previous one
(``CLIENT LIST``: ``user=``, ``name=``, ``addr=``), so :meth:`RedisAclRotator.usage`
reports it and ``retire`` can wait until it is idle. One rotation:

1. ``create_pending``  the user *not* named by ``redis_username`` of the consumer secret,
                       and a new random password (URL/DSN-safe);
2. ``apply``           ``ACL SETUSER <other> resetpass #<sha256>``: that user is idle by
                       construction (or retired), so its old passwords go; the password
                       is sent as its SHA-256 (all Redis stores), so the plaintext never
                       reaches ``MONITOR``, ``SLOWLOG`` or ``ACL LOG``. The user in use is
                       never changed;
3. ``verify``          a new connection ``AUTH <other> <new password>`` + ``PING``;
4. ``promote``         ``redis_username`` + ``redis_password`` of the consumer secret, by a
                       check-and-set read-modify-write (other keys are kept).

After the grace period ``retire`` removes the previous user's passwords
(``ACL SETUSER <previous> resetpass``: it can no longer log in; its permissions and
on/off flag stay), never those of the user in use (a later rotation may have flipped
back to it); with ``ctx.end_sessions`` (a hard deadline) it also ends what is still
connected as that user (``CLIENT KILL USER <previous>``). ``rollback`` removes the new
password.

**One user** (``acl_user: maily``, the single-user mode kept for existing setups): one
ACL user accepts the previous and the new password during the grace period; ``apply``
adds the new hash (``ACL SETUSER <user> #<sha256>``), ``retire`` removes the previous
one (``!<sha256>``). Redis shows the user of a connection, not which of its passwords
it used, so ``usage`` reports "not observable" and ``end_sessions`` cannot single the
old clients out.

Every step is idempotent: it looks at the user's password hashes (``ACL GETUSER``)
before changing them. A disabled (``off``) or ``nopass`` user is refused, not changed.

Options (``types.redis.options``)::

    acl_users: [maily, maily_b]            # two users (not "default"); or, one user:
    # acl_user: maily                      #   (not both; neither: acl_user maily)
    admin_secret: rotator/redis-admin      # optional: host, port, username, password
                                           # (+ optional tls); without it the rotator
                                           # connects to redis_host/redis_port of the
                                           # consumer secret as the default user, with no
                                           # password (a Redis without requirepass)
    username_key: redis_username           # optional; null: do not write the user name
                                           # (one user only)
    tls: false                             # optional, for every connection
    connect_timeout: 5                     # optional, seconds
    password_length: 32                    # optional, 16..256
    persist: acl_save                      # optional: acl_save (ACL SAVE when Redis has an
                                           # aclfile), config_rewrite, none

The admin needs ``+acl`` (and ``+client`` for ``usage`` and ``end_sessions``); it must
be another user than the application's. Redis replicates no ACL changes: with replicas
or a cluster every node needs the same change (one rotator run per node is not
implemented here).

Adopting a Redis that so far used ``requirepass`` / the default user::

    await ensure_redis_acl_user(admin_redis, "maily", password=<config's redis_password>)
    await ensure_redis_acl_user(admin_redis, "maily_b")   # no password: idle until rotated
    # then add redis_username: maily to the consumer secret (and to the app's template)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, ClassVar

import redis.asyncio as aioredis
from pydantic import BeforeValidator, SecretStr, ValidationInfo, field_validator
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from ...errors import PermissionDenied, SecretNotFound, VaultError
from ...targets import random_password
from ...targets.redis import (
    ACL_USER_NAME,
    DEFAULT_ACL_USER,
    SHA256_HEX,
    AclUser,
    RedisTarget,
    client_list,
    connect,
    get_acl_user,
    group_clients,
    password_rule,
    password_sha256,
    redis_command,
    scrub,
)
from ..base import (
    Adoption,
    CredentialUser,
    RotationContext,
    RotationError,
    Rotator,
    RotatorConfigError,
    Usage,
)
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
#: ``mode`` of a retiring record (and of a pending one) in two-user mode
TWO_USERS = "acl_users"
SINGLE_USER_NOTE = (
    "one ACL user with two passwords: the target cannot tell them apart; use acl_users"
)
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


def _acl_users(value: object) -> tuple[str, str]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("must name two different ACL users, e.g. [maily, maily_b]")
    a, b = (_acl_user(v) for v in value)
    if a == b:
        raise ValueError("must name two different ACL users, e.g. [maily, maily_b]")
    return (a, b)


def _key_name(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError("must be a key name or null")
    return value


class RedisOptions(RotatorOptions):
    error_prefix: ClassVar[str] = "redis {step}"

    acl_user: Annotated[str | None, BeforeValidator(_acl_user)] = None
    acl_users: Annotated[tuple[str, str] | None, BeforeValidator(_acl_users)] = None
    admin_secret: SecretName | None = None
    username_key: Annotated[str | None, BeforeValidator(_key_name)] = DEFAULT_USERNAME_KEY
    tls: Flag = False
    connect_timeout: Seconds = 5.0
    password_length: PasswordLength = 32
    persist: Annotated[str, one_of(*PERSIST_MODES)] = "acl_save"

    @field_validator("acl_users")
    @classmethod
    def _one_mode(cls, v: tuple[str, str] | None, info: ValidationInfo) -> tuple[str, str] | None:
        if v is not None and info.data.get("acl_user") is not None:
            raise ValueError(
                "cannot be set together with acl_user: two alternating users (acl_users)"
                " or one user with two passwords (acl_user)"
            )
        return v

    @field_validator("username_key")
    @classmethod
    def _names_the_user(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("acl_users") is not None:
            raise ValueError(
                "must name the key of the user name with acl_users (it says which of the"
                " two users is in use)"
            )
        return v

    @property
    def two_users(self) -> bool:
        return self.acl_users is not None

    @property
    def users(self) -> tuple[str, ...]:
        """The application's ACL user(s)."""
        return self.acl_users or (self.acl_user or DEFAULT_ACL_USER,)

    @property
    def user(self) -> str:
        """The one user of single-user mode."""
        return self.acl_user or DEFAULT_ACL_USER

    @property
    def user_key(self) -> str:
        return self.username_key or DEFAULT_USERNAME_KEY

    def other(self, active: str) -> str:
        a, b = self.acl_users or (self.user, self.user)
        return b if active == a else a


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


def _users_of(clients: list[tuple[int, str, str, int]]) -> tuple[CredentialUser, ...]:
    return tuple(
        CredentialUser(count=n, application=name, address=host or None, detail=f"oldest {age}s")
        for n, name, host, age in clients
    )


# ---------------------------------------------------------------------------- the rotator
class RedisAclRotator(Rotator):
    """``redis``: a new password on the idle one of two ACL users (or a second password
    on the one user), then switch to it."""

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
        if username in opts.users:
            problems.append(
                f"names the application's user {username} as admin (rotating it would"
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
        name: str,
        step: str,
        *,
        require_enabled: bool = False,
    ) -> AclUser:
        user = await get_acl_user(conn, name)
        if user is None:
            raise RotatorConfigError(
                f"redis {step}: ACL user {name} does not exist on {admin.describe()}"
                " (create it with ensure_redis_acl_user)"
            )
        if user.nopass:
            raise RotatorConfigError(
                f"redis {step}: ACL user {name} on {admin.describe()} is 'nopass':"
                " adding a password would lock out the clients that log in without one"
            )
        if require_enabled and not user.enabled:
            raise RotatorConfigError(
                f"redis {step}: ACL user {name} on {admin.describe()} is disabled"
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

    def _named_user(self, opts: RedisOptions, record: Mapping[str, Any], step: str) -> str:
        """The user a pending/retiring record names; it must be one of the configured."""
        name = str(record.get("user") or opts.users[0])
        if name not in opts.users:
            raise RotatorConfigError(
                f"redis {step}: this rotation was for ACL user {name}, but the configured"
                f" user(s) are now {', '.join(opts.users)}"
            )
        return name

    async def _change_passwords(
        self,
        ctx: RotationContext,
        step: str,
        record: Mapping[str, Any],
        *,
        add: str | None = None,
        remove: str | None = None,
        only: str | None = None,
    ) -> bool:
        """Change the password hashes of the user ``record`` names: add one, remove one,
        or ``only`` (reset to that one hash). False: nothing changed."""
        opts = RedisOptions.of(ctx, step)
        consumer, _ = await ctx.read_secret(step=step)
        admin = await self._admin(ctx, opts, consumer, step)
        name = self._named_user(opts, record, step)
        async with self._admin_conn(admin, opts, step) as conn:
            setting = add is not None or only is not None
            user = await self._user(conn, admin, name, step, require_enabled=setting)
            rules: list[str] = []
            if add is not None and add not in user.password_hashes:
                rules = [password_rule("#", add)]
            if remove is not None and remove in user.password_hashes:
                rules = [password_rule("!", remove)]
            if only is not None and user.password_hashes != {only}:
                rules = ["resetpass", password_rule("#", only)]
            if not rules:
                return False
            await redis_command(conn, "ACL", "SETUSER", name, *rules)
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
                if have not in opts.users:
                    if opts.two_users:
                        problems.append(
                            f"{opts.username_key} of {consumer_path.data} is"
                            f" {'missing' if have is None else repr(have)}, not one of the"
                            f" ACL users {', '.join(opts.users)}"
                        )
                    else:
                        problems.append(
                            f"{opts.username_key} of {consumer_path.data} is"
                            f" {'missing' if have is None else repr(have)}, not the ACL user"
                            f" {opts.user!r}: the application logs in as another user, and"
                            " switching it to this one must be done first"
                            " (ensure_redis_acl_user with its current password, then set"
                            f" {opts.username_key})"
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
                for name in opts.users:
                    await self._user(conn, admin, name, "check", require_enabled=True)
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
        if opts.two_users:
            active = str(consumer.get(opts.user_key) or "?")
            return (
                f"set a new password on ACL user {opts.other(active)} on {admin.describe()},"
                f" point {opts.user_key}/{PASSWORD_KEY} of {ctx.secret_path().data} at it"
                f" (currently {active}), remove {active}'s passwords after the grace period"
                f" ({ctx.grace})"
            )
        return (
            f"add a new password to ACL user {opts.user} on {admin.describe()}, point"
            f" {PASSWORD_KEY} of {ctx.secret_path().data} at it, remove the previous one"
            f" after the grace period ({ctx.grace})"
        )

    async def create_pending(self, ctx: RotationContext) -> dict[str, Any]:
        opts = RedisOptions.of(ctx, "create_pending")
        consumer, _ = await ctx.read_secret(step="create_pending")
        password = random_password(opts.password_length)
        previous = consumer.get(PASSWORD_KEY)
        pending: dict[str, Any] = {
            "user": opts.user,
            "password": password,
            "password_sha256": password_sha256(password),
            "previous_sha256": password_sha256(str(previous)) if previous else None,
        }
        if opts.two_users:
            active = consumer.get(opts.user_key)
            if active not in opts.users:
                raise RotatorConfigError(
                    f"redis create_pending: {opts.user_key} of {ctx.secret_path().data} is"
                    f" {active!r}, not one of the ACL users {', '.join(opts.users)}"
                )
            pending.update(user=opts.other(str(active)), previous_user=active, mode=TWO_USERS)
        return pending

    async def _guard_not_active(
        self, ctx: RotationContext, opts: RedisOptions, pending: dict[str, Any], step: str
    ) -> bool:
        """Two users: never change the passwords of the user in use. True: promoted already."""
        data, _ = await ctx.read_secret(step=step)
        if data.get(opts.user_key) != pending["user"]:
            return False
        if step == "apply" and data.get(PASSWORD_KEY) == pending["password"]:
            return True
        raise RotationError(
            f"redis {step}: {pending['user']} is the ACL user in use"
            f" ({ctx.secret_path().data}); refusing to change its passwords"
        )

    async def apply(self, ctx: RotationContext, pending: dict[str, Any]) -> None:
        digest = str(pending["password_sha256"])
        if pending.get("mode") == TWO_USERS:
            opts = RedisOptions.of(ctx, "apply")
            if await self._guard_not_active(ctx, opts, pending, "apply"):
                return  # promoted already: the password is set and in use
            await self._warn_connected(ctx, opts, str(pending["user"]))
            changed = await self._change_passwords(ctx, "apply", pending, only=digest)
            what = "new password set on the idle ACL user (its old passwords removed)"
        else:
            changed = await self._change_passwords(ctx, "apply", pending, add=digest)
            what = "new password added to the ACL user"
        ctx.log.info(
            f"redis: {what}",
            extra={"user": pending.get("user"), "step": "apply", "changed": changed},
        )

    async def _warn_connected(self, ctx: RotationContext, opts: RedisOptions, name: str) -> None:
        """The user about to get a new password should be idle; say so when it is not."""
        with contextlib.suppress(RotationError, RedisError, VaultError, OSError):
            consumer, _ = await ctx.read_secret(step="apply")
            admin = await self._admin(ctx, opts, consumer, "apply")
            async with self._admin_conn(admin, opts, "apply") as conn:
                clients = [c for c in await client_list(conn) if c.user == name]
            if clients:
                ctx.log.warning(
                    "redis: ACL user %s still has %d connection(s) (from before it was"
                    " retired); they stay connected and will count as its users",
                    name,
                    len(clients),
                    extra={"user": name, "connections": len(clients)},
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
        fields = {
            PASSWORD_KEY: password,
            **({opts.username_key: user} if opts.username_key else {}),
        }
        if pending.get("mode") == TWO_USERS:

            def not_stale_user(cur: dict[str, Any]) -> None:
                if cur.get(opts.user_key) == user and cur.get(PASSWORD_KEY) != password:
                    raise RotationError(
                        f"redis promote: {ctx.secret_path().data} already names {user} with"
                        " another password; this pending password is stale"
                    )

            return await promote_fields(
                ctx,
                fields,
                expect=(opts.user_key, pending.get("previous_user")),
                check=not_stale_user,
                message="consumer secret points at the new ACL user",
                extra={"user": user},
            )
        allowed = (pending.get("previous_sha256"), str(pending["password_sha256"]))

        def not_stale(cur: dict[str, Any]) -> None:
            have = cur.get(PASSWORD_KEY)
            if (password_sha256(str(have)) if have else None) not in allowed:
                raise RotationError(
                    f"redis promote: {PASSWORD_KEY} of {ctx.secret_path().data} changed during"
                    " the rotation; this pending password is stale"
                )

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
        if pending.get("mode") == TWO_USERS:
            await self._guard_not_active(ctx, RedisOptions.of(ctx, "rollback"), pending, "rollback")
        changed = await self._change_passwords(ctx, "rollback", pending, remove=digest)
        ctx.log.info(
            "redis: pending password removed",
            extra={"user": pending.get("user"), "changed": changed},
        )

    def retiring(self, ctx: RotationContext, pending: dict[str, Any]) -> dict[str, Any] | None:
        if pending.get("mode") == TWO_USERS:
            previous_user = pending.get("previous_user")
            if not previous_user or previous_user == pending.get("user"):
                return None
            return {"user": str(previous_user), "mode": TWO_USERS}
        previous = pending.get("previous_sha256")
        if not previous or previous == pending.get("password_sha256"):
            return None
        return {"user": pending["user"], "password_sha256": previous}

    async def retire(self, ctx: RotationContext, retiring: dict[str, Any]) -> str | None:
        """Two users: remove the previous user's passwords (never the user in use), then,
        with ``ctx.end_sessions``, end its connections. One user: remove the previous
        password, never the one the consumer secret holds."""
        if retiring.get("mode") == TWO_USERS:
            return await self._retire_user(ctx, retiring)
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
            return None
        changed = await self._change_passwords(ctx, "retire", retiring, remove=digest)
        ctx.log.info(
            "redis: previous password removed",
            extra={"user": retiring.get("user"), "changed": changed},
        )
        if ctx.end_sessions:
            return (
                f"removed the previous password of ACL user {retiring.get('user')}; its"
                " connections were not ended (one user with two passwords: the old"
                " clients cannot be told apart; use acl_users)"
            )
        return None

    async def _retire_user(self, ctx: RotationContext, retiring: dict[str, Any]) -> str | None:
        opts = RedisOptions.of(ctx, "retire")
        name = str(retiring.get("user") or "")
        if not opts.two_users or name not in opts.users:
            raise RotatorConfigError(
                f"redis retire: {name or '(none)'} is not one of the ACL users"
                f" {', '.join(opts.users)}; not retiring it"
            )
        if await in_use(
            ctx,
            "retire",
            opts.user_key,
            lambda active: active == name,
            unknown="cannot tell which ACL user is in use, so none is retired",
            what="ACL user",
            extra={"user": name},
        ):
            return f"{name} is the ACL user in use again (a later rotation); not retired"
        consumer, _ = await ctx.read_secret(step="retire")
        admin = await self._admin(ctx, opts, consumer, "retire")
        async with self._admin_conn(admin, opts, "retire") as conn:
            clients = [c for c in await client_list(conn) if c.user == name]
            user = await get_acl_user(conn, name)
            if user is None:
                return f"previous ACL user {name} no longer exists on {admin.describe()}"
            changed = False
            if user.password_hashes or user.nopass:
                await redis_command(conn, "ACL", "SETUSER", name, "resetpass")
                await self._persist(ctx, conn, admin, opts)
                changed = True
            ended = 0
            if ctx.end_sessions:
                ended = int(await redis_command(conn, "CLIENT", "KILL", "USER", name))
        usage = Usage(credential=name, users=_users_of(group_clients(clients)))
        ctx.log.log(
            logging.WARNING if clients else logging.INFO,
            "redis: previous ACL user retired",
            extra={
                "user": name,
                "host": admin.host,
                "changed": changed,
                "connections": len(clients),
                "ended": ended,
                "clients": [u.public() for u in usage.users],
            },
        )
        note = (
            f"retired previous ACL user {name} (its passwords removed, it can no longer log"
            f" in): {usage.describe()}"
        )
        if ctx.end_sessions:
            note += f"; ended {ended} connection(s) (CLIENT KILL USER)"
        return note

    async def usage(
        self,
        ctx: RotationContext,
        retiring: Mapping[str, Any] | None,
        since: datetime | None = None,
    ) -> Adoption | None:
        """Two users: who is connected as the current and as the previous user
        (``CLIENT LIST``: count, client name, address without port). One user: not
        observable. An unreachable Redis raises :class:`RotationError`."""
        opts = RedisOptions.of(ctx, "usage")
        consumer, _ = await ctx.read_secret(step="usage")
        if not opts.two_users:
            user = str(consumer.get(opts.user_key) or opts.user)
            blind = Usage(credential=user, observable=False, note=SINGLE_USER_NOTE)
            return Adoption(current=blind, previous=blind if retiring else None)
        current = str(consumer.get(opts.user_key) or "")
        if current not in opts.users:
            raise RotationError(
                f"redis usage: {opts.user_key} of {ctx.secret_path().data} is"
                f" {current or 'missing'!r}, not one of {', '.join(opts.users)}"
            )
        previous: str | None = None
        old_style = False
        if retiring:
            if retiring.get("mode") == TWO_USERS:
                previous = str(retiring.get("user") or "") or None
            else:  # a password kept by a rotation made in single-user mode
                old_style = True
        admin = await self._admin(ctx, opts, consumer, "usage")
        async with self._admin_conn(admin, opts, "usage") as conn:
            clients = await client_list(conn)

        def of(name: str, note: str = "") -> Usage:
            mine = [c for c in clients if c.user == name]
            return Usage(credential=name, users=_users_of(group_clients(mine)), note=note)

        prev: Usage | None = None
        if previous is not None:
            again = "the user in use again (a later rotation)" if previous == current else ""
            prev = of(previous, again)
        elif old_style:
            prev = Usage(
                credential=str(retiring.get("user") if retiring else current),
                observable=False,
                note="a password kept by a single-user rotation: " + SINGLE_USER_NOTE,
            )
        return Adoption(current=of(current), previous=prev)
