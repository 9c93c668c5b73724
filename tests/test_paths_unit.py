"""Pure logic: path parsing and X-Vault-Index ordering (no server needed)."""

from __future__ import annotations

import base64
import json

from maily_secrets.paths import KV2Path
from maily_secrets.vault.client import newer_index


def idx(cluster: str, value: int) -> str:
    return base64.b64encode(json.dumps({"cluster": cluster, "value": str(value)}).encode()).decode()


def test_kv2_path_parsing() -> None:
    assert KV2Path.parse("maily/data/config") == KV2Path("maily", "config")
    assert KV2Path.parse("team/kv/data/a/b") == KV2Path("team/kv", "a/b")
    assert KV2Path.parse("maily/data/data") == KV2Path("maily", "data")
    assert KV2Path.parse("sys/mounts") is None
    assert KV2Path.parse("maily/data") is None
    p = KV2Path("maily", "config")
    assert (p.data, p.metadata) == ("maily/data/config", "maily/metadata/config")


def test_newer_index_keeps_the_most_advanced() -> None:
    a5, a7 = idx("c1", 5), idx("c1", 7)
    assert newer_index(None, a5) == a5
    assert newer_index(a5, a7) == a7
    assert newer_index(a7, a5) == a7  # an older response arriving late does not win
    b1 = idx("c2", 1)
    assert newer_index(a7, b1) == b1  # another cluster: take the new one
    assert newer_index(a7, "not-base64!") == "not-base64!"
