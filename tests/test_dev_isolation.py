"""`mailyctl dev` on a shared machine: it deletes only what it made, names its PostgreSQL
roles and Redis users per dev directory, and keeps the root token and unseal key out of
the server's log.  Real OpenBao, PostgreSQL and Redis; nothing mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from maily_secrets.dev.server import DevServer
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.cli import mailyctl_env, run_mailyctl
from .secrecy import assert_absent

ROOT = Path(__file__).resolve().parents[1]


def mailyctl(*args: str, check: bool = True, env: dict[str, str] | None = None) -> Any:
    base = mailyctl_env(drop=("VAULT_", "BAO_", "MAILY_"), **(env or {}))
    return run_mailyctl(*args, env=base, timeout=120, check=check)


def dev_env(state: Path) -> dict[str, str]:
    line = mailyctl("dev", "env", "--dir", str(state)).stdout.strip()
    return dict(w.split("=", 1) for w in shlex.split(line)[1:])


def config_of(state: Path) -> dict[str, Any]:
    env = dev_env(state)

    async def read() -> dict[str, Any]:
        settings = VaultSettings(addr=env["VAULT_ADDR"], token=env["VAULT_TOKEN"])
        async with VaultClient(settings) as c:
            return dict((await c.kv.read("maily/data/config")).data)

    return asyncio.run(read())


def user_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _plant(d: Path) -> dict[str, bytes]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "notes.txt").write_text("my notes\n")
    (d / "keep").mkdir()
    (d / "keep" / "data.bin").write_bytes(b"\x00\x01precious")
    (d / ".hidden").write_text("x")
    return user_files(d)


# ------------------------------------------------------------------ 1. only what it made
def test_down_and_up_keep_files_the_tool_did_not_create(tmp_path: Path) -> None:
    d = tmp_path / "shared-folder"
    mine = _plant(d)
    pid = 0
    try:
        up = mailyctl("dev", "up", "--port", "0", "--dir", str(d))
        assert "started" in up.stdout
        status = json.loads(mailyctl("dev", "status", "--json", "--dir", str(d)).stdout)
        pid = int(status["pid"])
        assert (d / "token").exists() and (d / "server.log").exists()
        # the server dies (no `dev down`): the next `up` clears its leftovers, not ours
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while DevServer(d).running() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        up2 = mailyctl("dev", "up", "--port", "0", "--dir", str(d))
        assert "started" in up2.stdout
        for name, content in mine.items():
            assert (d / name).read_bytes() == content, f"{name} changed by dev up"
    finally:
        down = mailyctl("dev", "down", "--dir", str(d))
    assert "stopped" in down.stdout
    assert d.is_dir(), "dev down removed a folder it did not create"
    assert user_files(d) == mine  # everything the tool made is gone, the rest untouched
    assert sorted(p.name for p in d.iterdir()) == [".hidden", "keep", "notes.txt"]


def test_up_refuses_to_overwrite_a_file_it_did_not_make(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / "token").write_text("my own token file\n")
    out = mailyctl("dev", "up", "--port", "0", "--dir", str(d), check=False)
    try:
        assert out.returncode != 0
        assert "token" in (out.stdout + out.stderr)
        assert (d / "token").read_text() == "my own token file\n"
    finally:
        mailyctl("dev", "down", "--dir", str(d))
    assert (d / "token").read_text() == "my own token file\n"


def test_down_without_a_server_deletes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    mine = _plant(d)
    (d / "server.json").write_text("{}")  # not ours: no manifest says so
    mine = user_files(d)
    assert "No dev server" in mailyctl("dev", "down", "--dir", str(d)).stdout
    assert user_files(d) == mine


# ------------------------------------------------------------------ 3. no secret in the log
def test_server_log_holds_neither_root_token_nor_unseal_key(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "bao")
    info, _ = server.start(port=0)
    try:
        token = info.token()
        key = server.unseal_key()
        assert token and key
        for f in (server.state_dir / "token", server.state_dir / "unseal-key"):
            assert f.stat().st_mode & 0o077 == 0, f
        log = Path(info.server_log)
        deadline = time.monotonic() + 5
        while "redacted" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
        assert "dev mode" in text  # the rest of the banner is kept
        assert "Root Token: (redacted" in text and "Unseal Key: (redacted" in text
        assert_absent(token, text, "server.log")
        assert_absent(key, text, "server.log")
        # the stored key really unseals the server
        _seal_unseal(info.addr, token, key)
    finally:
        server.stop()


def _seal_unseal(addr: str, token: str, key: str) -> None:
    async def go() -> None:
        async with VaultClient(VaultSettings(addr=addr, token=token)) as c:
            await c.write("sys/seal")
            doc = await c.request("PUT", "sys/unseal", json_body={"key": key}, authenticated=False)
            assert (doc.body or {}).get("sealed") is False
            await c.read("sys/mounts")

    asyncio.run(go())


def test_cli_server_log_is_redacted_and_server_outlives_the_cli(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    try:
        mailyctl("dev", "up", "--port", "0", "--dir", str(d))
        env = dev_env(d)
        token = env["VAULT_TOKEN"]
        key = (d / "unseal-key").read_text().strip()
        text = (d / "server.log").read_text()
        assert_absent(token, text, "server.log")
        assert_absent(key, text, "server.log")
        assert "Root Token: (redacted" in text
        # the log filter outlived `dev up` (a dead pipe would kill bao with SIGPIPE on
        # its next line of output), and the server still works after a seal + unseal
        doc = json.loads((d / "server.json").read_text())
        cmdline = Path(f"/proc/{doc['log_filter_pid']}/cmdline").read_bytes().split(b"\0")
        assert b"filter-log" in cmdline and str(d / "server.log").encode() in cmdline
        assert_absent(token, b" ".join(cmdline).decode(), "the filter's argv")
        _seal_unseal(env["VAULT_ADDR"], token, key)
        status = json.loads(mailyctl("dev", "status", "--json", "--dir", str(d)).stdout)
        assert status["healthy"]
        assert_absent(token, (d / "server.log").read_text(), "server.log")
    finally:
        mailyctl("dev", "down", "--dir", str(d))
    assert not d.exists()


# ------------------------------------------------------------------ 2. per-directory names
def _pg_login(cfg: dict[str, Any]) -> str:
    with psycopg.connect(
        host=str(cfg["db_host"]),
        port=int(cfg["db_port"]),
        dbname="maily",
        user=str(cfg["db_username"]),
        password=str(cfg["db_password"]),
        connect_timeout=5,
    ) as conn:
        row = conn.execute("select session_user").fetchone()
    return str(row[0]) if row else ""


def _redis_login(cfg: dict[str, Any]) -> str:
    r = redis.Redis(
        host=str(cfg["redis_host"]),
        port=int(cfg["redis_port"]),
        username=str(cfg["redis_username"]),
        password=str(cfg["redis_password"]),
        socket_timeout=5,
    )
    try:
        return str(r.acl_whoami())
    finally:
        r.close()


def _pg_roles(names: list[str]) -> set[str]:
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5
    ) as conn:
        rows = conn.execute(
            "select rolname from pg_roles where rolname = any(%s)", (names,)
        ).fetchall()
    return {str(r[0]) for r in rows}


def _redis_users() -> set[str]:
    r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        return {str(u) for u in r.acl_users()}
    finally:
        r.close()


def test_two_dev_servers_never_rotate_each_others_credentials(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        mailyctl("dev", "up", "--port", "0", "--dir", str(a))
        mailyctl("dev", "up", "--port", "0", "--dir", str(b))
        ca, cb = config_of(a), config_of(b)
        assert ca["db_username"] != cb["db_username"]
        assert ca["redis_username"] != cb["redis_username"]
        assert ca["redis_username"] not in ("maily", "default")
        assert ca["db_username"] not in ("maily_app", "maily_app_b")
        # b's `up` did not change a's credentials
        assert _pg_login(ca) == ca["db_username"] and _pg_login(cb) == cb["db_username"]
        assert _redis_login(ca) == ca["redis_username"]
        assert _redis_login(cb) == cb["redis_username"]

        # rotate on a, as an operator does from a's `dev env`
        rot = mailyctl(
            "secrets", "rotate", "--secret-types=database,redis", "--json", env=dev_env(a)
        )
        results = {r["type"]: r for r in json.loads(rot.stdout)["results"]}
        assert {t: r["status"] for t, r in results.items()} == {
            "database": "rotated",
            "redis": "rotated",
        }, rot.stdout
        ra = config_of(a)
        assert (
            ra["db_password"] != ca["db_password"] and ra["redis_password"] != ca["redis_password"]
        )
        assert _pg_login(ra) == ra["db_username"] and _redis_login(ra) == ra["redis_username"]
        # b's credentials still work, unchanged
        assert config_of(b) == cb
        assert _pg_login(cb) == cb["db_username"] and _redis_login(cb) == cb["redis_username"]

        a_roles = [ca["db_username"], ra["db_username"]]
        b_roles = [cb["db_username"]]
        mailyctl("dev", "down", "--dir", str(a))
        # a's roles and user are gone; b's still log in
        assert not (_pg_roles(a_roles) & set(a_roles))
        assert ca["redis_username"] not in _redis_users()
        assert _pg_roles(b_roles) == set(b_roles)
        assert _pg_login(cb) == cb["db_username"] and _redis_login(cb) == cb["redis_username"]
    finally:
        mailyctl("dev", "down", "--dir", str(a))
        mailyctl("dev", "down", "--dir", str(b))
    assert not _pg_roles([cb["db_username"]])
    assert cb["redis_username"] not in _redis_users()


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """This module's dev directories live in /tmp/devtools-* (removed afterwards)."""
    d = Path(tempfile.mkdtemp(prefix="devtools-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("MAILY_DEV"):
            monkeypatch.delenv(k, raising=False)


def test_manifest_removes_only_what_it_recorded(tmp_path: Path) -> None:
    from maily_secrets.dev.server import Manifest

    root = tmp_path / "d"
    m = Manifest(root)
    m.claim_root()
    m.claim_file(root / "token").write_text("t")
    sub = m.claim_dir(root / "standins", generated=(".*.tmp",))
    mail = m.claim_dir(sub / "smtp-mail", generated=("*.eml",))
    (mail / "a.eml").write_text("mail")
    (sub / ".x.json.123.tmp").write_text("partial")
    (sub / "yours.txt").write_text("not ours")  # someone's file inside our folder
    (root / "other").write_text("not ours")
    with pytest.raises(Exception, match="not made by"):
        m.claim_file(root / "other")
    # a manifest is data: it never reaches outside the directory
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    doc = json.loads(m.path.read_text())
    doc["files"] += ["../outside.txt", str(outside)]
    doc["dirs"]["../"] = ["*"]
    m.path.write_text(json.dumps(doc))
    kept = m.remove_all()
    assert outside.read_text() == "keep"
    assert kept == ["standins"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "other",
        "standins",
        "standins/yours.txt",
    ]


# ------------------------------------------------------------------ 3. the dev database
def _databases(names: list[str]) -> dict[str, str | None]:
    """name -> its comment, for those of ``names`` that exist."""
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=5
    ) as conn:
        rows = conn.execute(
            "select datname, shobj_description(oid, 'pg_database') from pg_database"
            " where datname = any(%s)",
            (names,),
        ).fetchall()
    return {str(n): c for n, c in rows}


def _pg_url(dbname: str) -> dict[str, str]:
    return {"MAILY_DEV_PG_URL": f"postgresql://postgres@127.0.0.1:5432/{dbname}"}


def test_down_drops_the_database_up_made_once_no_other_dev_dir_uses_it(tmp_path: Path) -> None:
    from maily_secrets.bootstrap import CREATED_DATABASE_COMMENT

    db = f"maily_devdb_{os.urandom(4).hex()}"  # this test's own name on the shared server
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        up_a = mailyctl("dev", "up", "--port", "0", "--dir", str(a), env=_pg_url(db))
        assert "database" in up_a.stdout.lower(), up_a.stdout
        assert _databases([db]) == {db: CREATED_DATABASE_COMMENT}  # made, and marked
        mailyctl("dev", "up", "--port", "0", "--dir", str(b), env=_pg_url(db))

        down_a = mailyctl("dev", "down", "--dir", str(a))
        assert f"database {db} kept (other dev directories use it: 1)" in down_a.stdout
        assert db in _databases([db])  # b's roles still work in it

        down_b = mailyctl("dev", "down", "--dir", str(b))
        assert f"database {db} dropped" in down_b.stdout, down_b.stdout
        assert _databases([db]) == {}
    finally:
        mailyctl("dev", "down", "--dir", str(a), check=False)
        mailyctl("dev", "down", "--dir", str(b), check=False)
        _drop_database(db)


def test_down_keeps_a_database_that_up_found(tmp_path: Path) -> None:
    db = f"maily_devdb_{os.urandom(4).hex()}"
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(f'create database "{db}"')  # someone else's: no mark
    d = tmp_path / "d"
    try:
        mailyctl("dev", "up", "--port", "0", "--dir", str(d), env=_pg_url(db))
        down = mailyctl("dev", "down", "--dir", str(d))
        assert f"database {db} kept (not made by dev up)" in down.stdout, down.stdout
        assert _databases([db]) == {db: None}
    finally:
        mailyctl("dev", "down", "--dir", str(d), check=False)
        _drop_database(db)


def _drop_database(db: str) -> None:
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(f'drop database if exists "{db}"')
