"""Entry point of ``mailyctl`` (also ``./mailyctl.py`` at the repository root)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from .._version import __version__
from ..cliname import ENTRY_POINT, program
from . import dev, doctor, secrets, vault_cmd

app = typer.Typer(
    name="mailyctl",
    help="Maily Secrets operator CLI: dev Vault, secrets, diagnostics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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


app.add_typer(dev.app, name="dev", short_help="A local OpenBao dev server.")
app.add_typer(secrets.app, name="secrets", short_help="Rotate secrets; schedule, history.")
app.add_typer(vault_cmd.app, name="vault", short_help="Apply Maily's Vault setup.")
app.command("doctor", short_help="Check the Vault setup, with fix hints.")(doctor.doctor)


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


def run() -> None:
    from ..errors import ConfigurationError
    from .common import config_fail

    try:
        # usage lines name the command as it was invoked: mailyctl or ./mailyctl.py
        app(prog_name=program())
    except ConfigurationError as exc:  # bad configuration anywhere: one line, exit 2
        try:
            config_fail(exc)
        except typer.Exit as e:
            raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    run()
