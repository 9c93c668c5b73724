"""A real ``bao agent`` for a test: AppRole auto-auth, a template, an API proxy.

    role = await approle_reader(root, mount)          # an approle mount of the test's own
    with bao_agent(tmp, upstream=bao.addr, role=role, template=tpl) as agent:
        wait_json(agent.rendered, lambda d: True)     # the agent's first render
    with bao_agent(tmp, upstream=bao.addr, role=role, proxy=True) as agent:
        VaultSettings(agent_addr=agent.addr)         # no token: the agent adds its own

Nothing here sleeps to make time pass: it waits for a condition (a file, a port) with a
deadline and says what it waited for when the deadline passes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maily_secrets.dev.server import bao_binary, free_port
from maily_secrets.vault.client import VaultClient

from .servers import running


@dataclass(frozen=True)
class AppRole:
    """An AppRole of the test's own; ids live only in 0600 files the agent reads."""

    mount: str
    role_id_file: Path
    secret_id_file: Path = field(repr=False)


async def approle_reader(root: VaultClient, kv_mount: str, tmp: Path) -> AppRole:
    """A fresh approle auth mount with one role that may read (only) ``kv_mount``."""
    tag = uuid.uuid4().hex[:10]
    mount, policy = f"approle-agent-{tag}", f"agent-reader-{tag}"
    await root.write(f"sys/auth/{mount}", {"type": "approle"})
    await root.write(
        f"sys/policies/acl/{policy}",
        {
            "policy": f'path "{kv_mount}/data/*" {{ capabilities = ["read"] }}\n'
            f'path "{kv_mount}/metadata/*" {{ capabilities = ["read"] }}\n'
        },
    )
    await root.write(f"auth/{mount}/role/app", {"token_policies": [policy], "token_ttl": "10m"})
    role_id = str(((await root.read(f"auth/{mount}/role/app/role-id")).data or {})["role_id"])
    r = await root.write(f"auth/{mount}/role/app/secret-id", {})
    secret_id = str((r.data or {})["secret_id"])
    ids = tmp / "approle"
    ids.mkdir(mode=0o700, exist_ok=True)
    role = AppRole(mount, ids / "role-id", ids / "secret-id")
    for path, value in ((role.role_id_file, role_id), (role.secret_id_file, secret_id)):
        path.touch(mode=0o600)
        path.write_text(value)
    return role


@dataclass
class Agent:
    """A running agent: its proxy address (``proxy=True``), its rendered file, its log."""

    dir: Path
    log: Path
    addr: str | None = None
    rendered: Path | None = None


def _config(tmp: Path, upstream: str, role: AppRole, out: Path | None, port: int | None) -> str:
    parts = [
        f'pid_file = "{tmp / "agent.pid"}"',
        f'vault {{\n  address = "{upstream}"\n}}',
        f"""auto_auth {{
  method "approle" {{
    mount_path = "auth/{role.mount}"
    config {{
      role_id_file_path = "{role.role_id_file}"
      secret_id_file_path = "{role.secret_id_file}"
      remove_secret_id_file_after_reading = false
    }}
  }}
}}""",
    ]
    if out is not None:
        parts.append('template_config {\n  static_secret_render_interval = "1s"\n}')
        parts.append(
            f'template {{\n  source = "{tmp / "config.json.ctmpl"}"\n'
            f'  destination = "{out}"\n  perms = "0600"\n}}'
        )
    if port is not None:
        parts.append("api_proxy {\n  use_auto_auth_token = true\n}")
        parts.append(f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}')
    return "\n".join(parts) + "\n"


@contextlib.contextmanager
def bao_agent(
    tmp: Path,
    *,
    upstream: str,
    role: AppRole,
    template: str | None = None,
    proxy: bool = False,
    within: float = 30.0,
) -> Iterator[Agent]:
    """Start ``bao agent`` (AppRole auto-auth against ``upstream``); with ``template`` it
    renders it to ``agent.rendered`` every second; with ``proxy`` it serves the Vault API
    at ``agent.addr`` and adds its token to requests that carry none. Stopped on exit."""
    d = tmp / f"agent-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    out = None
    if template is not None:
        (d / "config.json.ctmpl").write_text(template)
        out = d / "secrets" / "config.json"
        out.parent.mkdir()
    port = free_port() if proxy else None
    cfg = d / "agent.hcl"
    cfg.write_text(_config(d, upstream, role, out, port))
    agent = Agent(d, d / "agent.log", rendered=out)
    with running([bao_binary(), "agent", f"-config={cfg}"], agent.log) as proc:
        if port is not None:
            agent.addr = f"http://127.0.0.1:{port}"
            _wait_port(port, within, lambda: proc.poll() is None, agent.log)
        yield agent


def _wait_port(port: int, within: float, alive: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"bao agent exited; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"bao agent did not listen on 127.0.0.1:{port} within {within}s")


def wait_json(
    path: Path, pred: Callable[[dict[str, Any]], bool], within: float = 30.0
) -> dict[str, Any]:
    """The JSON object in ``path`` once ``pred`` holds for it (a deadline, not a sleep)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            last = json.loads(path.read_text())
            if isinstance(last, dict) and pred(last):
                return last
        time.sleep(0.05)
    shown = sorted(last) if isinstance(last, dict) else type(last).__name__
    raise AssertionError(f"{path} not rendered as expected within {within}s (keys: {shown})")
