"""Secret path validation and KV v2 path arithmetic.

Paths are Vault API paths without the ``/v1/`` prefix, exactly as the guide
writes them: ``maily/data/config``.  Validation happens before any request, so
a bad path never reaches the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NewType

from .errors import InvalidPath

MAX_PATH_LENGTH = 1024  # code points, as in TypeScript
# The characters no path may contain (the same table as packages/services/src/vault/paths.ts,
# checked by tests/conformance/cases.json): C0 and C1 controls and DEL (Cc), format
# characters (Cf: soft hyphen, BOM, zero-width space/joiners, bidi marks, embeddings,
# overrides and isolates, invisible operators, tags), line and paragraph separators (Zl,
# Zp), lone surrogates (Cs) and every space separator except U+0020 (Zs: NBSP, ideographic
# space...), as of Unicode 17; plus the noncharacters (U+FDD0-FDEF, U+xFFFE/xFFFF). An
# explicit table, not unicodedata.category(): Python's and Node's Unicode versions differ.
# Ordinary letters of any script, digits, marks, symbols and emoji are allowed.
_CONTROL = re.compile(
    r"[\u0000-\u001f\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891"
    r"\u08e2\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000"
    r"\ud800-\udfff\ufdd0-\ufdef\ufeff\ufff9-\ufffb\ufffe\uffff"
    r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    r"\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    + "".join(rf"\U{plane:04x}fffe\U{plane:04x}ffff" for plane in range(1, 17))
    + "]"
)
# Characters that would change the meaning of the URL we build.
_FORBIDDEN = set("?#%\\")


ValidPath = NewType("ValidPath", str)
"""A path that :func:`checked` accepted: validated once, where it entered the library, so
that what it is handed to (the cache, the load, the KV engine) need not check it again."""


def validate_path(path: object) -> str:
    """Return ``path`` if it is a safe relative Vault path, else raise :class:`InvalidPath`."""
    if not isinstance(path, str):
        raise InvalidPath(f"secret path must be a string, got {type(path).__name__}")
    _check(path)  # memoized for valid paths: the same few paths are checked all the time
    return path


def checked(path: object) -> ValidPath:
    """``path`` as a :data:`ValidPath` if it is a safe relative Vault path, else raise
    :class:`InvalidPath`."""
    if not isinstance(path, str):
        raise InvalidPath(f"secret path must be a string, got {type(path).__name__}")
    _check(path)
    # The same str: ``ValidPath(path)`` would only cost a call (a NewType is a function).
    return path  # type: ignore[return-value]


@lru_cache(maxsize=4096)
def _check(path: str) -> None:
    if not path:
        raise InvalidPath("secret path is empty", path=path)
    shown = _CONTROL.sub("?", path)[:200]
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidPath(f"secret path {shown!r} is longer than {MAX_PATH_LENGTH}", path=shown)
    bad_char = _CONTROL.search(path)
    if bad_char:
        raise InvalidPath(
            f"secret path {shown!r} contains a control, format or separator character"
            f" (U+{ord(bad_char.group()):04X})",
            path=shown,
        )
    if "://" in path or path.lower().startswith(("http:", "https:", "//")):
        raise InvalidPath(
            f"secret path {shown!r} looks like a URL; give a path such as 'maily/data/config'",
            path=shown,
        )
    bad = sorted(_FORBIDDEN.intersection(path))
    if bad:
        raise InvalidPath(
            f"secret path {shown!r} contains forbidden character(s) {''.join(bad)!r}", path=shown
        )
    segments = path.split("/")
    if any(s == "" for s in segments):
        raise InvalidPath(
            f"secret path {shown!r} has an empty segment (leading, trailing or double '/')",
            path=shown,
        )
    if any(s in (".", "..") for s in segments):
        raise InvalidPath(f"secret path {shown!r} contains '.' or '..'", path=shown)
    if any(s.startswith(" ") or s.endswith(" ") for s in segments):
        raise InvalidPath(
            f"secret path {shown!r} has a segment with leading/trailing spaces", path=shown
        )


@dataclass(frozen=True, slots=True)
class KV2Path:
    """A KV v2 secret: ``<mount>/data/<name>``."""

    mount: str
    name: str
    # Spelled once (instances of a path are shared: see parse), not at every request.
    data: ValidPath = field(init=False, repr=False, compare=False)
    metadata: ValidPath = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", ValidPath(f"{self.mount}/data/{self.name}"))
        object.__setattr__(self, "metadata", ValidPath(f"{self.mount}/metadata/{self.name}"))

    @classmethod
    def parse(cls, path: str) -> KV2Path | None:
        """Split ``maily/data/config`` into mount and name; ``None`` if not a KV v2 data path.

        The first ``data`` segment after the first segment separates the mount
        from the secret name, so mounts with several segments (``team/kv``) work.
        """
        return _parse_kv2(checked(path))

    @classmethod
    def parse_valid(cls, path: ValidPath) -> KV2Path | None:
        """:meth:`parse` of a path already validated (one object per path: memoized)."""
        return _parse_kv2(path)

    @classmethod
    def _parse(cls, path: str) -> KV2Path | None:
        segments = path.split("/")
        for i in range(1, len(segments) - 1):
            if segments[i] == "data":
                return cls("/".join(segments[:i]), "/".join(segments[i + 1 :]))
        return None

    @classmethod
    def of(cls, mount: str, name: str) -> KV2Path:
        validate_path(f"{mount}/data/{name}")
        return cls(mount.strip("/"), name)


@lru_cache(maxsize=4096)
def _parse_kv2(path: str) -> KV2Path | None:
    return KV2Path._parse(path)
