"""Markdown tables of benchmark results (``bench/results/latest.json``), for the README and notes.

    bench/.venv/bin/python bench/markdown.py bench/results/latest.json
    bench/.venv/bin/python bench/markdown.py after.json --before before.json [--before ...]

The first form prints one row per goal: the medians and ranges of the variants, the ratio of
the medians and the range of the per-round ratios, met or missed.  The second prints, per goal,
the value of each run given (``--before`` runs first, then the main one), so that a change is
read off runs of the same harness.  It reads only what ``bench/run.py`` wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import fmt


def _load(path: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    return doc


def heading(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    load_b, load_a = m.get("load_before") or ["?"], m.get("load_after") or ["?"]
    commit = str(m.get("git_commit") or "?")[:10]
    dirty = " (dirty)" if m.get("git_dirty") else ""
    return (
        f"Run of {str(doc.get('timestamp', '?'))[:16].replace('T', ' ')} UTC,"
        f" `{doc.get('command', '?')}`, {doc.get('parameters', {}).get('rounds', '?')}"
        f" interleaved rounds, {m.get('cpu_model', '?')} ({m.get('cores', '?')} cores),"
        f" load average {load_b[0]} before, {load_a[0]} after, commit {commit}{dirty};"
        f" driver {float(doc.get('duration_s') or 0):.0f} s."
    )


def _value(g: dict[str, Any]) -> str:
    x = "x" if g.get("kind") == "ratio" else ""
    if g.get("value") is None:
        return "-"
    rng = "" if g.get("min") is None else f" ({fmt(g['min'])}-{fmt(g['max'])}{x})"
    return f"{fmt(g['value'])}{x}{rng}"


def _goal_text(g: dict[str, Any]) -> str:
    x = "x" if g.get("kind") == "ratio" else ""
    return f"{g['label']} {g['op']} {g['goal']:g}{x}"


def table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| figure | variant medians (range) | goal | ratio of medians (per-round range) | |",
        "|---|---|---|---|---|",
    ]
    for s in doc.get("summaries", []):
        if s.get("error") or not s.get("variants"):
            why = str(s.get("error") or s.get("errors")).replace("\n", " ").replace("|", "/")
            lines.append(f"| {s['title']} | not measured: {why[:200]} | | | |")
            continue
        vs = "; ".join(
            f"{k} {fmt(v.get('median'))} ({fmt(v.get('min'))}-{fmt(v.get('max'))})"
            for k, v in s["variants"].items()
            if not v.get("error")
        )
        for i, g in enumerate(s.get("goals", [])):
            lines.append(
                f"| {s['title'] if i == 0 else ''} | {vs + ' ' + s['unit'] if i == 0 else ''}"
                f" | {_goal_text(g)} | {_value(g)} | {g['status']} |"
            )
    return lines


def compare(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    names = [n for n, _ in docs]
    lines = [
        "| figure | goal | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    base = docs[-1][1]
    for s in base.get("summaries", []):
        for i, g in enumerate(s.get("goals", [])):
            cells = []
            for _, d in docs:
                other = next((o for o in d.get("summaries", []) if o.get("key") == s["key"]), None)
                og = (other or {}).get("goals", [])
                cell = _value(og[i]) + f" {og[i]['status']}" if i < len(og) else "-"
                cells.append(cell)
            title = s["title"] if i == 0 else ""
            lines.append(f"| {title} | {_goal_text(g)} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="a JSON document written by bench/run.py")
    ap.add_argument("--before", action="append", default=[], help="an earlier run to compare")
    ap.add_argument("--name", action="append", default=[], help="column names, in order")
    args = ap.parse_args(argv)
    paths = [*args.before, args.results]
    docs = [_load(p) for p in paths]
    if not args.before:
        print(heading(docs[0]) + "\n")
        print("\n".join(table(docs[0])))
        return 0
    names = (
        args.name if len(args.name) == len(paths) else [f"run {i + 1}" for i in range(len(paths))]
    )
    for n, d in zip(names, docs, strict=True):
        print(f"- {n}: {heading(d)}")
    print()
    print("\n".join(compare(list(zip(names, docs, strict=True)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
