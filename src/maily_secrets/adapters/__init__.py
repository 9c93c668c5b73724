"""Clients that follow a rotation: one line in the application, new credentials on the
next connection, old connections drained.

    pool = await adapters.postgres_pool(vault_service, min_size=2, max_size=20)
    redis = await adapters.redis_client(vault_service)
    session = await adapters.aws_session(vault_service)
    smtp = await adapters.smtp_sender(vault_service)

Each adapter is an optional extra (``pip install maily-secrets[postgres]``, ``[sqlalchemy]``,
``[redis]``, ``[aws]``, ``[smtp]``, or ``[adapters]`` for all); its driver is imported
only when the adapter is used. See docs/adapters.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "postgres_pool": "postgres",
    "postgres_pool_sync": "postgres",
    "sqlalchemy_engine": "sqlalchemy",
    "redis_client": "redis",
    "aws_session": "aws",
    "smtp_sender": "smtp",
    "jwt_signer": "jwt",
    "jwt_verifier": "jwt",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
