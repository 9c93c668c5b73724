"""Helpers shared by the CLI commands: consoles, styled lines, tables, JSON, exit codes, masking.

Nothing the CLI prints is parsed as Rich markup: the consoles have ``markup=False`` and
styles come as ``(text, style)`` pairs (:func:`say`, :func:`styled`), so a message that
holds ``[devserver]``, a path with brackets or an error text prints exactly as it is.
On a terminal lines wrap at word boundaries and tables are drawn; when stdout is not a
terminal (a pipe, a file, a CronJob's log) nothing is wrapped and tables are plain
aligned lines, never cut to 80 columns. Times print as RFC 3339 UTC, everywhere.

Rich is imported only to print to a terminal: ``--help``, ``--json``, exit codes and
every line to a pipe or a file (a CronJob's log, the progress lines of ``rotate --json``)
do not load it (51 modules, ~30 ms of a start). Such a line is what Rich would print
there: the text of its parts, with the control codes Rich strips removed and tabs
expanded; anything else (non-ASCII text with a tab) still goes through Rich.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeAlias

import typer

from ..clock import rfc3339

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

#: a piece of a line: plain text, a Rich Text, or (text, style) such as ("ok", "green")
Part: TypeAlias = "str | Text | tuple[str, str]"


@cache
def console(stderr: bool = False) -> Console:
    """The console of stdout (``stderr``: of stderr), made on first use."""
    from rich.console import Console

    c = Console(stderr=stderr, highlight=False, markup=False, emoji=False)
    if not c.is_terminal:
        c.soft_wrap = True  # a pipe or a file: one line stays one line
    return c


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_PUBLIC_KEY = re.compile(r"(^|_)(host|port|region|username|user|name|url|endpoint)$")


def styled(text: str, style: str) -> tuple[str, str]:
    return (text, style)


#: what Rich removes from a Text (rich.control.STRIP_CONTROL_CODES): BEL, BS, VT, FF, CR
_STRIP = dict.fromkeys((7, 8, 11, 12, 13))


def _stream(stderr: bool) -> TextIO:
    return sys.stderr if stderr else sys.stdout


def is_terminal(stderr: bool = False) -> bool:
    """Whether Rich would treat stdout (``stderr``: stderr) as a terminal: its
    ``TTY_COMPATIBLE`` and ``FORCE_COLOR`` variables first, else ``isatty()``."""
    compatible = os.environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    force = os.environ.get("FORCE_COLOR")
    if force is not None:
        return force != ""
    isatty = getattr(_stream(stderr), "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _plain(*parts: Part) -> str | None:
    """The line Rich prints for ``parts`` where there is no terminal; None when only
    Rich can tell (a tab after non-ASCII text: it expands tabs by cell width)."""
    text = "".join(
        p if isinstance(p, str) else p[0] if isinstance(p, tuple) else p.plain for p in parts
    )
    text = text.translate(_STRIP)
    if "\t" in text:
        if not text.isascii():
            return None
        text = "\n".join(ln.expandtabs(8) for ln in text.split("\n"))
    return text


def line(*parts: Part) -> Text:
    """One line of output from plain and styled parts; no part is read as markup."""
    from rich.text import Text

    return Text.assemble(*parts)


def say(*parts: Part, err: bool = False) -> None:
    if not is_terminal(err):
        text = _plain(*parts)
        if text is not None:
            stream = _stream(err)
            stream.write(text + "\n")
            stream.flush()
            return
    c = console(stderr=err)
    c.print(line(*parts), soft_wrap=not c.is_terminal)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    say(styled("error:", "red"), " ", message, err=True)
    raise typer.Exit(code)


def config_fail(exc: BaseException) -> NoReturn:
    """Bad configuration (ConfigurationError): one line naming the variable, exit 2."""
    typer.echo(f"error: {' '.join(str(exc).split())}", err=True)  # one line, never wrapped
    raise typer.Exit(EXIT_USAGE)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Part]]) -> None:
    """A table on a terminal; plain lines (title, header, one row per line, columns
    aligned with two spaces, nothing cut) when stdout is not a terminal."""
    if is_terminal():
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*[line(c) for c in row])
        console().print(t)
        return
    plain = [list(columns), *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in plain) for i in range(len(columns))]
    say(title)
    for r in plain:
        say("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(part: Part) -> str:
    """A cell's text as ``line(part).plain`` (control codes stripped, tabs kept)."""
    text = part if isinstance(part, str) else part[0] if isinstance(part, tuple) else part.plain
    return text.translate(_STRIP)


def jsonable(v: Any) -> Any:
    """The CLI's JSON conventions, applied to a whole document: every time is an RFC 3339
    UTC string with milliseconds (``2026-12-01T23:18:18.123Z``), every interval a number
    of seconds, paths are strings."""
    if isinstance(v, datetime):
        return rfc3339(v)
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, PurePath):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    return v


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(doc), indent=2, sort_keys=True, default=str) + "\n")


def fmt_time(t: datetime | None, never: str = "never") -> str:
    """A time for people: RFC 3339 UTC to the second (the JSON documents add milliseconds)."""
    return rfc3339(t, ms=False) if t else never


def mask(key: str, value: Any) -> str:
    """Show non-secret settings (hosts, ports, regions, user names); mask everything else."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {mask(k, v)}" for k, v in value.items()) + "}"
    if _PUBLIC_KEY.search(key.lower()) and isinstance(value, (str, int)):
        return str(value)
    length = len(str(value)) if value is not None else 0
    return f"****** ({length} chars)"
