"""Access to the integration guide's code blocks, to run them verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [
    ROOT.parent / "shared" / "spec" / "vault-integration-guide.md",  # the spec itself
    ROOT / "docs" / "vault-integration-guide.md",  # the copy shipped with the repo
]


def guide_text() -> str:
    for p in _CANDIDATES:
        if p.is_file():
            return p.read_text()
    raise FileNotFoundError("vault-integration-guide.md not found in shared/spec or docs/")


def code_blocks(section: str, lang: str) -> list[str]:
    """The ``lang`` code blocks under the heading whose text is ``section``."""
    text = guide_text()
    m = re.search(rf"^#+ {re.escape(section)}\s*$", text, re.M)
    if m is None:
        raise KeyError(f"section {section!r} not in the guide")
    rest = text[m.end() :]
    nxt = re.search(r"^#+ ", rest, re.M)
    body = rest[: nxt.start()] if nxt else rest
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)
