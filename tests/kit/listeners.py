"""Secret listeners on a ``ManualClock``: a secret of the test's own, a service polling it.

path = await new_secret(root, {"v": 0})
svc = service(bao, ManualClock())            # polls every LISTENER_INTERVAL clock seconds
await svc.register_secret_listener(path, got.append)
"""

from __future__ import annotations

import uuid
from typing import Any

from maily_secrets.clock import ManualClock
from maily_secrets.service import VaultService
from maily_secrets.vault.client import VaultClient

from ..conftest import Bao

LISTENER_INTERVAL = 1.0  # seconds of the ManualClock between polls
# These tests write around the service (``root.kv.write``, like `bao kv put`): with the
# change feed on, such a write is seen at a path's full poll, made here every interval.
FULL_POLL_INTERVAL = LISTENER_INTERVAL


async def new_secret(root: VaultClient, data: dict[str, Any], prefix: str = "listen") -> str:
    """A new ``maily/data/<prefix>-<hex>`` secret holding ``data`` (version 1)."""
    path = f"maily/data/{prefix}-{uuid.uuid4().hex[:10]}"
    await root.kv.write(path, data, cas=0)
    return path


def service(bao: Bao, clock: ManualClock, **kw: Any) -> VaultService:
    """A ``VaultService`` of ``bao`` whose listeners poll on ``clock``; ``kw``: settings."""
    kw.setdefault("listener_full_poll_interval", FULL_POLL_INTERVAL)
    svc = VaultService(bao.settings(listener_interval=LISTENER_INTERVAL, **kw))
    svc.clock = clock  # type: ignore[attr-defined]  # until VaultService takes clock=
    return svc
