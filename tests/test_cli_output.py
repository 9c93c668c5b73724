"""The CLI's lines to a pipe or a file are what Rich prints there, without Rich.

Pure logic: each text is printed through :func:`maily_secrets.cli.common.say` and through
a Rich console made as the CLI makes its own (no markup, no highlighting, soft wrap),
both to a stream that is not a terminal, and the two outputs compared.
"""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console
from rich.text import Text

from maily_secrets.cli import common

TEXTS = [
    "plain",
    "a\tb",
    "tab\t\tx\nsecond\tline",
    "cr\rx",
    "a\r\nb",
    "esc\x1b[31mred",
    "bell\x07 bs\x08x vt\x0bff\x0cz",
    "wide 漢字 é",
    "wide 漢\ttab",  # only Rich knows the cell width: printed by Rich
    "trail   ",
    "multi\nline",
    "",
    "  lead",
    "[bold]x[/] [devserver]",
    ":smile:",
    "nul\x00x del\x7fx",
    "x\u200by",
]


@pytest.fixture(autouse=True)
def _no_terminal_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)


def _rich(*parts: common.Part) -> str:
    buf = io.StringIO()
    c = Console(file=buf, highlight=False, markup=False, emoji=False)
    c.soft_wrap = True
    c.print(Text.assemble(*parts), soft_wrap=True)
    return buf.getvalue()


def _say(monkeypatch: pytest.MonkeyPatch, *parts: common.Part, err: bool = False) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr" if err else "stdout", buf)
    common.say(*parts, err=err)
    return buf.getvalue()


@pytest.mark.parametrize("text", TEXTS)
def test_say_to_a_pipe_prints_what_rich_prints(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    parts: tuple[common.Part, ...] = (text, " ", common.styled(text, "bold red"), Text(text))
    assert _say(monkeypatch, *parts) == _rich(*parts)
    assert _say(monkeypatch, *parts, err=True) == _rich(*parts)


def test_print_table_to_a_pipe_keeps_cells_as_rich_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    rows: list[list[common.Part]] = [["a\rb", common.styled("ok", "green")], ["long cell", "x"]]
    common.print_table("title", ("col", "state"), rows)
    assert buf.getvalue() == "title\ncol        state\nab         ok\nlong cell  x\n"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"FORCE_COLOR": "1"},
        {"FORCE_COLOR": ""},
        {"TTY_COMPATIBLE": "1"},
        {"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"},
        {"TTY_COMPATIBLE": "2", "FORCE_COLOR": "1"},
    ],
)
def test_is_terminal_agrees_with_rich(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    assert common.is_terminal() == Console(file=buf).is_terminal
