"""Results: per-variant rounds, ratios against goals, a rich table and a JSON document."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench_workloads import Sample
from rich.console import Console
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


def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_cpu(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def _fmt_ratio(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}x" if v >= 100 else f"{v:,.2f}x"


def render(console: Console, benchmarks: list[Benchmark], meta: dict[str, Any]) -> None:
    figures = Table(title="Maily Secrets benchmarks", title_justify="left")
    figures.add_column("Benchmark")
    figures.add_column("Variant", no_wrap=True)
    figures.add_column("Median", justify="right", no_wrap=True)
    figures.add_column("CPU µs/op", justify="right", no_wrap=True)
    figures.add_column("All rounds", justify="right")
    for b in benchmarks:
        for i, v in enumerate(b.variants.values()):
            rounds = (
                f"[red]error: {v.error}[/red]"
                if v.error
                else " ".join(f"{r:,.0f}" for r in v.rates)
            )
            figures.add_row(
                f"{b.title}\n[dim]{v.unit}[/dim]" if i == 0 else "",
                v.label,
                _fmt_rate(v.median),
                _fmt_cpu(v.cpu_us_per_op),
                rounds,
                end_section=i == len(b.variants) - 1,
            )
    console.print(figures)

    ratios = Table(title="Ratios (medians) against goals", title_justify="left")
    ratios.add_column("Benchmark")
    ratios.add_column("Ratio")
    ratios.add_column("Value", justify="right")
    ratios.add_column("Goal", justify="right")
    ratios.add_column("Status")
    for b in benchmarks:
        for r in b.ratios:
            met = r.met
            status = (
                "[yellow]n/a[/yellow]"
                if met is None
                else "[green]met[/green]"
                if met
                else "[bold red]MISSED[/bold red]"
            )
            ratios.add_row(b.title, r.label, _fmt_ratio(r.value), f">= {r.goal:g}x", status)
    console.print(ratios)

    p = meta.get("parameters", {})
    console.print(
        f"[dim]{meta.get('environment', {}).get('cpus')} CPUs; "
        f"B: {p.get('secrets')} distinct paths; {p.get('rounds')} interleaved rounds"
        " per variant; ratios compare medians.\n"
        "CPU µs/op: this process's CPU time per operation (all threads; the server's"
        " is not counted).\n"
        f"Results: {meta.get('output')}[/dim]"
    )
