"""A Celery-style worker process for ``tests/test_sync.py`` (light to import in a spawned child).

The child builds its own :class:`~maily_secrets.sync.SyncVaultService`, runs one task
function many times and exits without ``close()``: the exit hook closes it.
"""

from __future__ import annotations

from typing import Any

from maily_secrets.settings import VaultSettings
from maily_secrets.sync import SyncVaultService


def celery_worker(addr: str, token: str, path: str, tasks: int, out: Any) -> None:
    """Put the results of ``tasks`` runs of a task (read, encrypt, decrypt) on ``out``."""
    svc = SyncVaultService(VaultSettings(addr=addr, token=token, auth_method="token"))

    def task(i: int) -> str:
        secret = svc.get_secret(path)
        ct = svc.encrypt_data("maily-enc-key", f"{secret['v']}-{i}")
        return svc.decrypt_data("maily-enc-key", ct)

    out.put([task(i) for i in range(tasks)])
