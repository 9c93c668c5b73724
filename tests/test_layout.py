"""The shape of the package: no import cycle among src/ modules, rotators and targets apart.

Every ``import`` and ``from ... import`` is counted, at module level, inside functions and
under ``TYPE_CHECKING`` alike: a cycle hidden in a function is still a cycle a reader has
to hold in their head.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "maily_secrets"


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_the_package_and_would_see_a_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "maily_secrets.vault.client" in graph["maily_secrets.service"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_src_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_rotator_imports_another_and_targets_import_no_rotation() -> None:
    """What rotators share lives in rotation/ (kit, iam_keys, rewrap), not in a rotator;
    the targets know nothing of rotations."""
    graph = import_graph()
    rotators = {m for m in graph if m.startswith("maily_secrets.rotation.rotators.")}
    assert len(rotators) == 7
    crossed = {(m, t) for m in rotators for t in graph[m] if t in rotators}
    assert crossed == set()
    targets = [m for m in graph if m.startswith("maily_secrets.targets")]
    assert len(targets) == 5
    into_rotation = {
        (m, t) for m in targets for t in graph[m] if t.startswith("maily_secrets.rotation")
    }
    assert into_rotation == set()
