"""A secret served from a file that Vault Agent renders (``MAILY_CONFIG_FILE``).

The Kubernetes injector (``deploy/k8s/deployment.yaml``) renders ``maily/data/config``
into ``/vault/secrets/config.json`` and re-renders it when the secret changes. With
``MAILY_CONFIG_FILE`` set, the service serves ``get_config()`` from that file: no
request to Vault, no token, no login.

:class:`FileSecret` is what the service asks:

- :meth:`FileSecret.entry` the current value (a JSON object) as a cache entry whose
  ``version`` counts content changes in this process (1, 2, ...);
- :meth:`FileSecret.version` the same counter, so that the path's listener watcher
  (``listeners.py``) polls the file instead of Vault's metadata, on the service's clock,
  and fires the callbacks registered for the path.

A check is one ``stat()``: the file is read again only when its device, inode, size or
modification time moved (the agent writes a temporary file and renames it over the old
one: a new inode), and a new version is counted only when the content differs. A file
that is missing, partial, not JSON or not an object keeps the last good value served;
one warning is logged per bad spell (the file name and the reason: never a value),
and one line when it is good again. Before any good read the error is
:class:`ConfigFileUnavailable` (a :class:`~maily_secrets.errors.VaultUnavailable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .cache import Entry
from .clock import SYSTEM_CLOCK, Clock
from .errors import VaultUnavailable

log = logging.getLogger("maily_secrets.filesource")

MAX_BYTES = 8 << 20  # a KV secret is far smaller; a bigger file is not ours

_Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class ConfigFileUnavailable(VaultUnavailable):
    """The rendered file has never been readable as a JSON object in this process."""


class FileSecret:
    """One secret path served from one JSON file."""

    def __init__(self, file: Path, path: str, *, clock: Clock | None = None) -> None:
        self.file = Path(file)
        self.path = path
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._signature: _Signature | None = None
        self._digest: bytes | None = None
        self._value: dict[str, Any] | None = None
        self._version = 0
        self._bad: str | None = None  # the reason of the current bad spell, if any
        self.reads = 0  # file reads (not stats): for tests and figures

    def __repr__(self) -> str:  # never the value
        return (
            f"<FileSecret {self.path!r} from {str(self.file)!r} version={self._version}"
            f" bad={self._bad is not None}>"
        )

    def version(self) -> int:
        """The content version after checking the file (0: never read successfully)."""
        self._check()
        return self._version

    def entry(self) -> Entry:
        """The last good value as a cache entry (checks the file first)."""
        self._check()
        if self._value is None:
            raise ConfigFileUnavailable(
                f"{self.path!r} is served from {self.file} (MAILY_CONFIG_FILE), which is"
                f" not readable as a JSON object: {self._bad or 'not read yet'}",
                path=self.path,
            )
        return Entry.make(self._value, self._version, clock=self.clock)

    # ------------------------------------------------------------------ internals
    def _check(self) -> None:
        try:
            st = os.stat(self.file)
        except OSError as exc:
            self._failed(exc.strerror or type(exc).__name__)
            self._signature = None
            return
        sig: _Signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._signature:
            return
        value, raw, why = self._read(st.st_size)
        if value is None:
            # A partial write: try again at the next check even if nothing moves.
            self._signature = None
            self._failed(why)
            return
        self._signature = sig
        digest = hashlib.sha256(raw).digest()
        if self._bad is not None:
            self._bad = None
            log.info(
                "%s is a valid JSON object again; serving it for %s",
                self.file,
                self.path,
                extra={"file": str(self.file), "path": self.path},
            )
        if digest == self._digest:
            return
        self._digest = digest
        self._value = value
        self._version += 1

    def _read(self, size: int) -> tuple[dict[str, Any] | None, bytes, str]:
        if size > MAX_BYTES:
            return None, b"", f"larger than {MAX_BYTES} bytes"
        try:
            with open(self.file, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as exc:
            return None, b"", exc.strerror or type(exc).__name__
        self.reads += 1
        try:
            value = json.loads(raw)
        except UnicodeDecodeError:
            return None, raw, "not UTF-8"
        except json.JSONDecodeError as exc:  # its position only: the message quotes no text
            return None, raw, f"not valid JSON (line {exc.lineno}, column {exc.colno})"
        if not isinstance(value, dict):
            return None, raw, f"a JSON {type(value).__name__}, not an object"
        return value, raw, ""

    def _failed(self, why: str) -> None:
        if self._bad is not None:
            self._bad = why
            return
        self._bad = why
        log.warning(
            "cannot use %s for %s (%s); %s",
            self.file,
            self.path,
            why,
            "keeping the last good value" if self._value is not None else "nothing to serve yet",
            extra={"file": str(self.file), "path": self.path, "reason": why},
        )
