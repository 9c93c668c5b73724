"""Results: the figures of every module summarised (medians, ranges, per-round ratios,
goals met or missed) and printed as tables.

:func:`summarize` is the pure part (``tests/test_bench_report.py``); :func:`render` prints.
:class:`Benchmark`, :class:`Ratio` and :class:`Variant` are the older, sample-based form that
``bench_transit.py`` still uses."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench_workloads import Sample
from rich.console import Console
from rich.markup import escape
from rich.table import Table


@dataclass
class Variant:
    key: str
    label: str
    unit: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def rates(self) -> list[float]:
        return [s.rate for s in self.samples]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.samples and not self.error else None

    @property
    def cpu_us_per_op(self) -> float | None:
        if not self.samples or self.error:
            return None
        return statistics.median(s.cpu_us_per_op for s in self.samples)

    @property
    def best(self) -> float | None:
        return max(self.rates) if self.samples and not self.error else None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "median": _round(self.median),
            "best": _round(self.best),
            "spread": round(max(self.rates) / min(self.rates), 3)
            if self.samples and min(self.rates) > 0
            else None,
            "client_cpu_us_per_op": None if (c := self.cpu_us_per_op) is None else round(c, 3),
            "rounds": [
                {
                    "ops": s.ops,
                    "seconds": round(s.seconds, 6),
                    "cpu_seconds": round(s.cpu, 6),
                    "rate": round(s.rate, 1),
                    "http_requests": s.requests,
                }
                for s in self.samples
            ],
            "error": self.error,
        }


@dataclass(frozen=True)
class Ratio:
    label: str
    num: Variant
    den: Variant
    goal: float

    @property
    def value(self) -> float | None:
        a, b = self.num.median, self.den.median
        if a is None or b is None or b <= 0:
            return None
        return a / b

    @property
    def met(self) -> bool | None:
        v = self.value
        return None if v is None else v >= self.goal

    def to_json(self) -> dict[str, Any]:
        v = self.value
        return {
            "label": self.label,
            "numerator": self.num.key,
            "denominator": self.den.key,
            "value": None if v is None else round(v, 3),
            "goal": self.goal,
            "met": self.met,
            "basis": "median",
        }


@dataclass
class Benchmark:
    key: str
    title: str
    description: str
    variants: dict[str, Variant]
    ratios: list[Ratio] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "variants": {k: v.to_json() for k, v in self.variants.items()},
            "ratios": [r.to_json() for r in self.ratios],
            "notes": self.notes,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


# ---------------------------------------------------------------------------- figure dicts
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def error_figure(key: str, title: str, error: str) -> dict[str, Any]:
    """The figure of a module or script that could not run (the run goes on)."""
    return {"key": key, "title": title, "variants": {}, "goals": [], "error": error}


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Median and range (min-max) of some rounds; ``None`` for none."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def per_round_ratios(num: Sequence[float], den: Sequence[float], scale: float = 1.0) -> list[float]:
    """Round ``i`` of the numerator over round ``i`` of the denominator (rounds are
    interleaved, so round ``i`` of both ran side by side)."""
    return [a / (scale * b) for a, b in zip(num, den, strict=False) if b > 0]


def _rounds(v: dict[str, Any]) -> list[float]:
    if v.get("error"):
        return []
    return [float(x) for x in v.get("rounds") or [] if isinstance(x, int | float)]


def summarize(fig: dict[str, Any]) -> dict[str, Any]:
    """Medians, ranges and goal verdicts of one figure dict (see ``bench_context``).

    A ratio goal's value is the ratio of the medians; its range is that of the per-round
    ratios.  A goal is ``met``/``missed`` by its value, or ``n/a`` when a variant it needs
    was not measured (which is also an error of the figure).
    """
    errors: list[str] = []
    if fig.get("error"):
        errors.append(str(fig["error"]))
    variants: dict[str, Any] = {}
    for k, v in (fig.get("variants") or {}).items():
        rounds = _rounds(v)
        s = spread(rounds)
        cpu = spread([float(x) for x in v.get("cpu_us_per_op") or []])
        if v.get("error"):
            errors.append(f"{k}: {v['error']}")
        elif s is None:
            errors.append(f"{k}: no rounds")
        variants[k] = {
            "label": v.get("label", k),
            "rounds": rounds,
            **({"median": s["median"], "min": s["min"], "max": s["max"]} if s else {}),
            "cpu_us_per_op": None if cpu is None else cpu["median"],
            "error": v.get("error"),
        }
    goals: list[dict[str, Any]] = []
    for g in fig.get("goals") or []:
        goals.append(_goal(g, fig.get("variants") or {}, errors))
    return {
        "key": fig.get("key", "?"),
        "title": fig.get("title", fig.get("key", "?")),
        "description": fig.get("description", ""),
        "unit": fig.get("unit", ""),
        "better": fig.get("better", ""),
        "variants": variants,
        "goals": goals,
        "error": fig.get("error"),
        "errors": errors,
    }


def _goal(g: dict[str, Any], variants: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    op, bound = g.get("op", ">="), float(g.get("value", 0.0))
    out: dict[str, Any] = {"label": g.get("label", "?"), "op": op, "goal": bound}
    check = OPS.get(op)
    if check is None:
        errors.append(f"goal {out['label']}: unknown op {op!r}")
        return {**out, "status": "n/a"}
    if "variant" in g:  # an absolute bound on one variant's median
        rounds = _rounds(variants.get(g["variant"], {}))
        s = spread(rounds)
        out.update(kind="bound", variant=g["variant"])
        if s is None:
            return {**out, "status": "n/a"}
        return {
            **out,
            "value": s["median"],
            "min": s["min"],
            "max": s["max"],
            "status": "met" if check(s["median"], bound) else "missed",
        }
    num = _rounds(variants.get(str(g.get("num")), {}))
    den = _rounds(variants.get(str(g.get("den")), {}))
    scale = float(g.get("scale", 1.0))
    out.update(kind="ratio", num=g.get("num"), den=g.get("den"), scale=scale)
    if not num or not den or statistics.median(den) <= 0 or scale <= 0:
        return {**out, "status": "n/a"}
    value = statistics.median(num) / (scale * statistics.median(den))
    ratios = per_round_ratios(num, den, scale)
    return {
        **out,
        "value": value,
        "rounds": ratios,
        "min": min(ratios) if ratios else None,
        "max": max(ratios) if ratios else None,
        "status": "met" if check(value, bound) else "missed",
    }


def verdicts(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every goal's verdict across figures, and every error."""

    def names(status: str) -> list[str]:
        return [
            f"{s['key']}: {g['label']}"
            for s in summaries
            for g in s["goals"]
            if g["status"] == status
        ]

    missed, na = names("missed"), names("n/a")
    return {
        "all_met": not missed and not na and bool(names("met")),
        "met": names("met"),
        "missed": missed,
        "not_measured": na,
        "errors": {s["key"]: s["errors"] for s in summaries if s["errors"]},
    }


# ---------------------------------------------------------------------------- tables
def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _fmt_range(lo: float | None, hi: float | None, suffix: str = "") -> str:
    if lo is None or hi is None:
        return "-"
    return f"{fmt(lo)}{suffix}-{fmt(hi)}{suffix}"


_STATUS = {
    "met": "[green]met[/green]",
    "missed": "[bold red]missed[/bold red]",
    "n/a": "[yellow]n/a[/yellow]",
}


def render(console: Console, summaries: Sequence[dict[str, Any]]) -> None:
    """One table per figure: each variant's median and range, each goal's ratio of medians
    and range of per-round ratios, met or missed."""
    for s in summaries:
        better = f", {s['better']} is better" if s["better"] else ""
        t = Table(
            title=f"{s['title']} [dim]({s['unit']}{better})[/dim]",
            title_justify="left",
            caption=s["description"] or None,
            caption_justify="left",
        )
        t.add_column("")
        t.add_column("median", justify="right", no_wrap=True)
        t.add_column("range (min-max)", justify="right", no_wrap=True)
        t.add_column("CPU µs/op", justify="right", no_wrap=True)
        t.add_column("goal", justify="right", no_wrap=True)
        t.add_column("", no_wrap=True)
        variants = list(s["variants"].items())
        for i, (k, v) in enumerate(variants):
            if v.get("error"):
                t.add_row(
                    f"{k} [dim]{escape(v['label'])}[/dim]",
                    "[red]error[/red]",
                    escape(str(v["error"])[:80]),
                    "",
                    "",
                    "",
                )
                continue
            t.add_row(
                f"{k} [dim]{escape(v['label'])}[/dim]",
                fmt(v.get("median")),
                _fmt_range(v.get("min"), v.get("max")),
                fmt(v.get("cpu_us_per_op")),
                "",
                "",
                end_section=i == len(variants) - 1,
            )
        for g in s["goals"]:
            x = "x" if g.get("kind") == "ratio" else ""
            t.add_row(
                g["label"],
                "-" if g.get("value") is None else f"{fmt(g['value'])}{x}",
                _fmt_range(g.get("min"), g.get("max"), x),
                "",
                f"{g['op']} {g['goal']:g}{x}",
                _STATUS[g["status"]],
            )
        if s.get("error"):
            t.add_row("[red]error[/red]", "", "", "", "", "")
        console.print(t)
        if s.get("error"):
            console.print(f"  [red]{escape(s['key'])}: {escape(str(s['error']))}[/red]")
