"""Helpers shared by the CLI commands: console, exit codes, masking."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_PUBLIC_KEY = re.compile(r"(^|_)(host|port|region|username|user|name|url|endpoint)$")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def config_fail(exc: BaseException) -> NoReturn:
    """Bad configuration (ConfigurationError): one line naming the variable, exit 2."""
    typer.echo(f"error: {' '.join(str(exc).split())}", err=True)  # one line, never wrapped
    raise typer.Exit(EXIT_USAGE)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def mask(key: str, value: Any) -> str:
    """Show non-secret settings (hosts, ports, regions, user names); mask everything else."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {mask(k, v)}" for k, v in value.items()) + "}"
    if _PUBLIC_KEY.search(key.lower()) and isinstance(value, (str, int)):
        return str(value)
    length = len(str(value)) if value is not None else 0
    return f"****** ({length} chars)"
