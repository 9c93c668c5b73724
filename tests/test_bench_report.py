"""The bench driver's aggregation (bench/bench_report.py): medians, ranges, per-round
ratios and goal verdicts of figure dicts. Pure logic: no server, no clock."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_report import error_figure, per_round_ratios, summarize, verdicts


def figure(goals: list[dict[str, Any]], **variants: list[float]) -> dict[str, Any]:
    return {
        "key": "f",
        "title": "F",
        "unit": "ops/s",
        "better": "higher",
        "variants": {k: {"label": k, "rounds": r} for k, r in variants.items()},
        "goals": goals,
    }


def test_per_round_ratio_pairs_round_i_of_numerator_with_round_i_of_denominator() -> None:
    assert per_round_ratios([10, 30, 20], [5, 10, 40]) == [2.0, 3.0, 0.5]


def test_per_round_ratio_applies_the_scale_and_skips_a_zero_denominator() -> None:
    assert per_round_ratios([100, 60], [0, 3], scale=10) == [2.0]


def test_variant_summary_has_median_and_min_max_range() -> None:
    s = summarize(figure([], ours=[3.0, 1.0, 2.0, 10.0, 4.0]))
    v = s["variants"]["ours"]
    assert (v["median"], v["min"], v["max"]) == (3.0, 1.0, 10.0)
    assert s["errors"] == []


def test_ratio_goal_is_the_ratio_of_medians_with_the_range_of_per_round_ratios() -> None:
    g = {"label": "ours / peer", "num": "ours", "den": "peer", "op": ">=", "value": 1.0}
    s = summarize(figure([g], ours=[10.0, 20.0, 30.0], peer=[20.0, 10.0, 10.0]))
    goal = s["goals"][0]
    assert goal["value"] == pytest.approx(20.0 / 10.0)  # medians, not a mean of ratios
    assert goal["rounds"] == pytest.approx([0.5, 2.0, 3.0])
    assert (goal["min"], goal["max"]) == pytest.approx((0.5, 3.0))
    assert goal["status"] == "met"


@pytest.mark.parametrize(
    ("op", "bound", "status"),
    [(">=", 2.5, "missed"), (">=", 2.0, "met"), ("<=", 1.5, "missed"), ("<=", 2.0, "met")],
)
def test_ratio_goal_verdict_in_both_directions(op: str, bound: float, status: str) -> None:
    g = {"label": "r", "num": "a", "den": "b", "op": op, "value": bound}
    s = summarize(figure([g], a=[4.0, 4.0, 4.0], b=[2.0, 2.0, 2.0]))
    assert s["goals"][0]["status"] == status


def test_scaled_ratio_goal_divides_by_scale_times_the_denominator() -> None:
    g = {"label": "linear", "num": "n1000", "den": "n100", "op": "<=", "value": 1.5, "scale": 10}
    s = summarize(figure([g], n1000=[12.0, 20.0, 16.0], n100=[1.0, 1.0, 1.0]))
    goal = s["goals"][0]
    assert goal["value"] == pytest.approx(1.6)
    assert (goal["min"], goal["max"]) == pytest.approx((1.2, 2.0))
    assert goal["status"] == "missed"


@pytest.mark.parametrize(
    ("op", "bound", "status"), [("<=", 1.0, "met"), ("<=", 0.5, "missed"), (">=", 0.9, "missed")]
)
def test_bound_goal_compares_one_variants_median(op: str, bound: float, status: str) -> None:
    g = {"label": "wall", "variant": "ours", "op": op, "value": bound}
    goal = summarize(figure([g], ours=[0.8, 0.6, 1.4]))["goals"][0]
    assert (goal["value"], goal["min"], goal["max"]) == (0.8, 0.6, 1.4)
    assert goal["status"] == status


def test_error_figure_is_an_error_and_leaves_nothing_measured() -> None:
    s = summarize(error_figure("cli", "bench_cli", "ModuleNotFoundError: No module"))
    assert s["errors"] == ["ModuleNotFoundError: No module"]
    assert s["variants"] == {} and s["goals"] == []
    v = verdicts([s])
    assert v["errors"] == {"cli": ["ModuleNotFoundError: No module"]}
    assert v["all_met"] is False


def test_a_failed_variant_makes_its_goals_not_measured_and_the_figure_an_error() -> None:
    g = {"label": "ours / peer", "num": "ours", "den": "peer", "op": ">=", "value": 1.0}
    f = figure([g], ours=[1.0, 1.0])
    f["variants"]["peer"] = {"label": "peer", "rounds": [2.0], "error": "HTTP 500"}
    s = summarize(f)
    assert s["goals"][0]["status"] == "n/a"
    assert s["errors"] == ["peer: HTTP 500"]
    v = verdicts([s])
    assert v["not_measured"] == ["f: ours / peer"] and v["all_met"] is False


def test_verdicts_list_met_and_missed_goals_by_figure() -> None:
    met = {"label": "a / b", "num": "a", "den": "b", "op": ">=", "value": 1.0}
    missed = {"label": "b / a", "num": "b", "den": "a", "op": ">=", "value": 1.0}
    v = verdicts([summarize(figure([met, missed], a=[2.0], b=[1.0]))])
    assert v["met"] == ["f: a / b"]
    assert v["missed"] == ["f: b / a"]
    assert v["errors"] == {} and v["all_met"] is False
