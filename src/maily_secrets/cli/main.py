"""Entry point of ``mailyctl`` (also ``./mailyctl.py`` at the repository root).

The command groups (``dev``, ``secrets``, ``vault``) and ``doctor`` are registered by
name and short help only: a group's module, and what it imports (aiohttp, pydantic,
psycopg...), loads when a command of it runs or its help is asked for, so
``mailyctl --help`` or ``mailyctl secrets status`` import only what they use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer
import typer.main
from typer.core import TyperGroup

from .._version import __version__
from ..cliname import ENTRY_POINT, program

if TYPE_CHECKING:  # typer's own click (the types its TyperGroup is declared with)
    from typer._click import Context as ClickContext
    from typer._click import HelpFormatter

#: how the app and every lazily loaded part of it are built (the same for all)
_TYPER: dict[str, Any] = {"pretty_exceptions_enable": False, "rich_markup_mode": None}


class _Lazy(NamedTuple):
    module: str  # of this package
    attr: str  # a typer.Typer (group) or a command function
    short_help: str
    group: bool = True


#: name -> where it lives; the help lists commands in this order
_LAZY: dict[str, _Lazy] = {
    "doctor": _Lazy("doctor", "doctor", "Check the Vault setup, with fix hints.", group=False),
    "dev": _Lazy("dev", "app", "A local OpenBao dev server."),
    "secrets": _Lazy("secrets", "app", "Rotate secrets; schedule, history."),
    "vault": _Lazy("vault_cmd", "app", "Apply Maily's Vault setup."),
}
_ORDER = ("doctor", "snapshot-key", "completion", "dev", "secrets", "vault")


def _load(name: str) -> Any:
    """The click command of a lazy entry, built as ``add_typer``/``command`` would have."""
    spec = _LAZY[name]
    obj = getattr(importlib.import_module(f"{__package__}.{spec.module}"), spec.attr)
    holder = typer.Typer(**_TYPER)
    if spec.group:
        holder.add_typer(obj, name=name, short_help=spec.short_help)
    else:
        holder.command(name, short_help=spec.short_help)(obj)
    return typer.main.get_group(holder).commands[name]


class _Commands(MutableMapping[str, Any]):
    """A group's commands: the eager ones, and the lazy ones loaded on first access.
    Names (``keys()``, iteration) never load anything."""

    def __init__(self, eager: MutableMapping[str, Any]) -> None:
        self._cmds = dict(eager)

    def loaded(self, name: str) -> bool:
        return name in self._cmds

    def __getitem__(self, name: str) -> Any:
        if name not in self._cmds:
            if name not in _LAZY:
                raise KeyError(name)
            self._cmds[name] = _load(name)
        return self._cmds[name]

    def __setitem__(self, name: str, cmd: Any) -> None:
        self._cmds[name] = cmd

    def __delitem__(self, name: str) -> None:
        del self._cmds[name]

    def __iter__(self) -> Iterator[str]:
        names = [n for n in _ORDER if n in self._cmds or n in _LAZY]
        return iter(names + [n for n in self._cmds if n not in names])

    def __len__(self) -> int:
        return len(set(self._cmds) | set(_LAZY))


class _LazyGroup(TyperGroup):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return list(self.commands)  # names only: nothing loads

    def format_commands(self, ctx: ClickContext, formatter: HelpFormatter) -> None:
        """The command list of ``--help``: a lazy command's short help is known without
        importing it."""
        cmds = self.commands
        assert isinstance(cmds, _Commands)
        names = [
            n
            for n in self.list_commands(ctx)
            if (n in _LAZY and not cmds.loaded(n)) or not cmds[n].hidden
        ]
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))
        rows = [
            (n, _LAZY[n].short_help if not cmds.loaded(n) else cmds[n].get_short_help_str(limit))
            for n in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="mailyctl",
    help="Maily Secrets operator CLI: dev Vault, secrets, diagnostics.",
    no_args_is_help=True,
    cls=_LazyGroup,
    **_TYPER,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mailyctl (maily-secrets) {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version of maily-secrets and exit.",
        ),
    ] = False,
) -> None:
    """Maily Secrets operator CLI: dev Vault, secrets, diagnostics."""


@app.command("snapshot-key", short_help="Print a new snapshot encryption key.")
def snapshot_key() -> None:
    """Print a new key for MAILY_SECRETS_SNAPSHOT_KEY (the encrypted last-known-good snapshot)."""
    from ..snapshot import generate_key

    typer.echo(generate_key())


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"


@app.command("completion", short_help="Print a shell completion script.")
def completion(
    shell: Annotated[Shell, typer.Argument(help="bash, zsh, fish or powershell.")],
) -> None:
    """Print the shell completion script of the installed `mailyctl` command.

    bash: mailyctl completion bash > ~/.local/share/bash-completion/completions/mailyctl;
    zsh: mailyctl completion zsh > "${fpath[1]}/_mailyctl"; fish: mailyctl completion fish >
    ~/.config/fish/completions/mailyctl.fish. (--install-completion does the same for the
    shell you run.)
    """
    from typer._completion_shared import get_completion_script

    complete_var = f"_{ENTRY_POINT.upper()}_COMPLETE"
    typer.echo(
        get_completion_script(prog_name=ENTRY_POINT, complete_var=complete_var, shell=shell.value)
    )


# gc thresholds of a CLI process (mailyctl.py sets the same before importing the CLI)
CLI_GC_THRESHOLDS = (50_000, 20, 20)


def run() -> None:
    """The program: one command, one short process.

    Its cyclic garbage collector runs rarely: what a command allocates is mostly what it
    keeps to the end (modules, classes, pydantic schemas, typer's parameter adapters), so
    with the default thresholds each collection walked a growing heap to free next to
    nothing: 115-235 young and one or two full collections per ``secrets status`` or
    ``rotate``, 100-300 ms of a 1 s start on this machine under load (``gc.callbacks``).
    It is not off: a long command (a rewrap of many ciphertexts, every type rotated) still
    frees its cycles, a young collection per 50,000 allocations instead of 700.
    """
    import gc

    gc.set_threshold(*CLI_GC_THRESHOLDS)
    from ..errors import ConfigurationError

    try:
        # usage lines name the command as it was invoked: mailyctl or ./mailyctl.py
        app(prog_name=program())
    except ConfigurationError as exc:  # bad configuration anywhere: one line, exit 2
        from .common import config_fail

        try:
            config_fail(exc)
        except typer.Exit as e:
            raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    run()
