"""``make demo``: walk through the integration guide against the embedded OpenBao.

Run ``./mailyctl.py dev up`` first (``make demo`` does). Values are masked.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time

from rich.console import Console
from rich.table import Table

from .cli.common import mask
from .devserver import DevServer
from .errors import InvalidPath, SecretNotFound
from .logs import configure

console = Console(highlight=False)


def _table(title: str, data: dict[str, object]) -> Table:
    t = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    t.add_column("key")
    t.add_column("value (masked)")
    for k, v in data.items():
        t.add_row(k, mask(k, v))
    return t


async def basic_usage() -> None:
    # The guide's "Basic Usage", as a Maily service would write it.
    from apps.api.services.vault_service import vault_service

    access = io.StringIO()
    configure(logging.INFO, stream=access)

    config = await vault_service.get_config()
    db_host = config.get("db_host")
    aws_creds = await vault_service.get_credentials("aws")
    access_key = aws_creds.get("aws_access_key")
    api_keys = await vault_service.get_api_keys()
    stripe_key = api_keys.get("stripe")

    console.rule("[bold]1. Basic Usage[/bold]  (apps.api.services.vault_service)")
    console.print(_table("await vault_service.get_config()", config))
    console.print(_table('await vault_service.get_credentials("aws")', aws_creds))
    console.print(_table("await vault_service.get_api_keys()", api_keys))
    console.print(
        f"db_host = {db_host}, access_key = {mask('aws_access_key', access_key)},"
        f" stripe_key = {mask('stripe', stripe_key)}"
    )

    console.rule("[bold]2. Access log[/bold] (best practice 6: names and outcomes, no values)")
    logging.getLogger("maily_secrets").setLevel(logging.WARNING)
    lines = [ln for ln in access.getvalue().splitlines() if '"secret_read"' in ln]
    for ln in lines[:4]:
        console.print(ln, markup=False, soft_wrap=True)
    console.print(f"... {len(lines)} access events so far (JSON lines, maily_secrets.access)")
    console.rule("[bold]3. Cache[/bold]")
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        await vault_service.get_config()
    per_call = (time.perf_counter() - t0) / n * 1e6
    console.print(f"{n:,} cached get_config() calls: {per_call:.2f} µs each (no Vault request)")

    console.rule("[bold]4. Errors are typed and name the path, never a value[/bold]")
    try:
        await vault_service.get_secret("maily/data/no-such-secret")
    except SecretNotFound as exc:
        console.print(f"SecretNotFound: {exc}")
    try:
        await vault_service.get_secret("maily/../sys/seal")
    except InvalidPath as exc:
        console.print(f"InvalidPath:    {exc}")

    await vault_service.close()


def main() -> int:
    server = DevServer()
    info = server.running()
    if info is None:
        console.print("[red]The dev server is not running.[/red] Start it: ./mailyctl.py dev up")
        return 1
    # What a Maily service gets from its environment.
    os.environ["VAULT_ADDR"] = info.addr
    os.environ["VAULT_TOKEN"] = info.token()
    asyncio.run(basic_usage())
    console.rule()
    console.print(f"OpenBao dev server still running at {info.addr}.")
    console.print('Explore:  eval "$(./mailyctl.py dev env)"    Stop:  ./mailyctl.py dev down')
    return 0


if __name__ == "__main__":
    sys.exit(main())
