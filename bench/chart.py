"""One chart of ours against each peer: every ratio goal of every figure, normalised so the
peer is 1.0, with error bars from the range of the per-round ratios and the goal marked.

    bench/.venv/bin/python bench/chart.py [bench/results/latest.json]   # redraw from a run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter


def bars(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ratio goals that were measured, as chart rows (label, value, low, high, goal)."""
    rows = []
    for s in summaries:
        for g in s["goals"]:
            if g.get("kind") != "ratio" or g.get("value") is None:
                continue
            rows.append(
                {
                    "label": f"{s['title']}: {g['label']}",
                    "value": g["value"],
                    "low": g.get("min", g["value"]),
                    "high": g.get("max", g["value"]),
                    "goal": g["goal"],
                    "op": g["op"],
                    "met": g["status"] == "met",
                }
            )
    return rows


def draw(summaries: list[dict[str, Any]], path: Path, subtitle: str = "") -> Path | None:
    rows = bars(summaries)
    if not rows:
        return None
    height = max(3.0, 0.42 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(11, height))
    y = list(range(len(rows)))[::-1]
    values = [r["value"] for r in rows]
    err = [
        [max(0.0, r["value"] - r["low"]) for r in rows],
        [max(0.0, r["high"] - r["value"]) for r in rows],
    ]
    colors = ["#2e7d32" if r["met"] else "#c62828" for r in rows]
    ax.barh(y, values, xerr=err, color=colors, alpha=0.8, capsize=3, height=0.6)
    for yi, r in zip(y, rows, strict=True):
        ax.plot([r["goal"]], [yi], marker="|", markersize=18, color="black")
        arrow = "higher is better" if r["op"].startswith(">") else "lower is better"
        ax.annotate(
            f"{r['value']:.2f}x (goal {r['op']} {r['goal']:g}x, {arrow})",
            (max(r["high"], r["goal"]), yi),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    lo = min(min(values), min(r["low"] for r in rows), min(r["goal"] for r in rows))
    hi = max(max(r["high"] for r in rows), max(r["goal"] for r in rows))
    ax.set_xlim(lo / 1.6, hi * 6)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel(
        "ours / peer (peer = 1.0, log scale); bar: ratio of medians,"
        " whiskers: range of per-round ratios, |: goal"
    )
    ax.set_title("Maily Secrets vs its peers" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "latest.json"
    doc = json.loads(src.read_text())
    out = draw(doc["summaries"], src.with_suffix(".png"))
    print(out or "no ratio goal measured: no chart")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
