"""Entry point of ``mailyctl`` (also ``./mailyctl.py`` at the repository root)."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from . import dev, doctor, secrets, vault_cmd

app = typer.Typer(
    name="mailyctl",
    help="Maily Secrets operator CLI: dev Vault, secrets, diagnostics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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


app.add_typer(dev.app, name="dev")
app.add_typer(secrets.app, name="secrets")
app.add_typer(vault_cmd.app, name="vault")
app.command("doctor")(doctor.doctor)


@app.command("snapshot-key")
def snapshot_key() -> None:
    """Print a new key for MAILY_SECRETS_SNAPSHOT_KEY (the encrypted last-known-good snapshot)."""
    from ..snapshot import generate_key

    typer.echo(generate_key())


def run() -> None:
    from ..errors import ConfigurationError
    from .common import config_fail

    try:
        app()
    except ConfigurationError as exc:  # bad configuration anywhere: one line, exit 2
        try:
            config_fail(exc)
        except typer.Exit as e:
            raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    run()
