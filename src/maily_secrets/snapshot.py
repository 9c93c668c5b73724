"""Encrypted last-known-good snapshot of the secret cache on disk.

So that a process restarted during a Vault outage can still start: the file is
Fernet-encrypted (AES-128-CBC + HMAC-SHA256) with a key from the environment
(``MAILY_SECRETS_SNAPSHOT_KEY``), written atomically with mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from .cliname import command

log = logging.getLogger("maily_secrets.snapshot")

FORMAT = 1


def generate_key() -> str:
    """A new snapshot key, suitable for ``MAILY_SECRETS_SNAPSHOT_KEY``."""
    return Fernet.generate_key().decode()


class SnapshotStore:
    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError):
            raise ValueError(
                "MAILY_SECRETS_SNAPSHOT_KEY is not a valid Fernet key"
                " (32 url-safe base64-encoded bytes; make one with"
                f" `{command('snapshot-key')}`)"
            ) from None

    def save(self, entries: dict[str, dict[str, Any]]) -> None:
        """Atomically replace the snapshot with ``entries``.

        ``entries`` maps a path to ``{"data", "version", "fetched_at"}``.
        """
        blob = self._fernet.encrypt(json.dumps({"format": FORMAT, "entries": entries}).encode())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def load(self) -> dict[str, dict[str, Any]]:
        """The stored entries; ``{}`` when there is no usable snapshot (never raises)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning(
                "cannot read secret snapshot", extra={"file": str(self.path), "error": str(exc)}
            )
            return {}
        try:
            doc = json.loads(self._fernet.decrypt(blob))
        except (InvalidToken, ValueError):
            log.warning(
                "secret snapshot cannot be decrypted (wrong key or corrupt file); ignoring it",
                extra={"file": str(self.path)},
            )
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return {}
        entries = doc.get("entries")
        return entries if isinstance(entries, dict) else {}
