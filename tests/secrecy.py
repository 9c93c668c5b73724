"""Assertions about secret values that never print them when they fail.

pytest's assertion rewriting shows the operands of a failed ``assert``; these
helpers live outside test modules (not rewritten) and say only what differs.
"""

from __future__ import annotations

from typing import Any


def assert_same(actual: Any, expected: Any, what: str = "value") -> None:
    if actual != expected:
        keys = (
            sorted(set(actual) ^ set(expected))
            if isinstance(actual, dict) and isinstance(expected, dict)
            else []
        )
        raise AssertionError(f"{what} differs (values not shown; keys only on one side: {keys})")


def assert_absent(value: Any, text: str, where: str = "output") -> None:
    if str(value) and str(value) in text:
        raise AssertionError(f"a secret value appears in {where} (not shown)")


def assert_differ(a: Any, b: Any, what: str = "values") -> None:
    if a == b:
        raise AssertionError(f"{what} are equal (not shown)")
