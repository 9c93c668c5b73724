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
    """The ``lang`` code blocks under the heading whose text is ``section``.

    Lines starting with ``#`` inside code fences (shell comments) are not headings.
    """
    blocks: list[str] = []
    in_section = in_fence = False
    current: list[str] | None = None
    for line in guide_text().splitlines():
        if line.startswith("```"):
            if in_fence:
                if current is not None:
                    blocks.append("\n".join(current) + "\n")
                in_fence, current = False, None
            else:
                in_fence = True
                current = [] if in_section and line.strip() == f"```{lang}" else None
            continue
        if in_fence:
            if current is not None:
                current.append(line)
            continue
        m = re.match(r"^#+ (.*?)\s*$", line)
        if m:
            if in_section:
                break
            in_section = m.group(1) == section
    if not in_section and not blocks:
        raise KeyError(f"section {section!r} not in the guide")
    return blocks
