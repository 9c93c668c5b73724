"""One contract for both clients: tests/conformance/cases.json.

The Python side is checked here (paths, error classes, the retry matrix, settings
defaults and names, the redirect rule); the TypeScript side by
packages/services/test/conformance.test.mjs, which reads the same file and is run
here too (no Vault needed) as well as in tests/test_typescript.py's Node suite.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices
from yarl import URL

from maily_secrets import errors
from maily_secrets.errors import InvalidPath
from maily_secrets.paths import MAX_PATH_LENGTH, validate_path
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.policy import error_class, redirect_target, should_retry

from .test_typescript import ts_built  # noqa: F401 - the fixture that builds the TS client

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, Any] = json.loads((ROOT / "tests" / "conformance" / "cases.json").read_text())
NODE = shutil.which("node")


def _valid(path: str) -> bool:
    try:
        validate_path(path)
    except InvalidPath:
        return False
    return True


# ---------------------------------------------------------------------------- (a) paths
PATHS = CASES["paths"]


@pytest.mark.parametrize("case", PATHS["cases"], ids=lambda c: c["why"])
def test_path_cases(case: dict[str, Any]) -> None:
    assert _valid(case["path"]) is case["valid"], (ascii(case["path"]), case["why"])


@pytest.mark.parametrize("case", PATHS["repeat"], ids=lambda c: c["why"])
def test_path_length_in_code_points(case: dict[str, Any]) -> None:
    assert PATHS["max_length"] == MAX_PATH_LENGTH
    path = case["prefix"] + case["unit"] * case["count"]
    assert _valid(path) is case["valid"], case["why"]


def _in_ranges(cp: int, ranges: list[list[int]]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def test_forbidden_ranges_boundaries() -> None:
    ranges: list[list[int]] = PATHS["forbidden_ranges"]
    wrong = []
    for lo, hi in ranges:
        for cp in {lo, hi, (lo + hi) // 2}:
            if _valid(f"m/a{chr(cp)}b"):
                wrong.append(f"U+{cp:04X} accepted")
        for cp in (lo - 1, hi + 1):
            if 0 <= cp <= 0x10FFFF and not _in_ranges(cp, ranges) and chr(cp) not in "?#%\\/ ":
                if not _valid(f"m/a{chr(cp)}b"):
                    wrong.append(f"U+{cp:04X} refused")
    assert not wrong, wrong


def test_forbidden_ranges_are_exactly_the_table() -> None:
    """Every code point: refused iff in the table (or one of the URL-changing characters)."""
    ranges: list[list[int]] = PATHS["forbidden_ranges"]
    table = [False] * 0x110000
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            table[cp] = True
    from maily_secrets.paths import _CONTROL

    wrong = [
        f"U+{cp:04X}" for cp in range(0x110000) if bool(_CONTROL.match(chr(cp))) is not table[cp]
    ]
    assert not wrong, wrong[:20]


# ---------------------------------------------------------------------------- (b) errors
@pytest.mark.parametrize(
    "case", CASES["errors"]["cases"], ids=lambda c: f"{c['status']}-{c['detail'][:20]}"
)
def test_error_class(case: dict[str, Any]) -> None:
    expected = getattr(errors, case["class"])
    assert error_class(case["status"], case["detail"]) is expected


# ---------------------------------------------------------------------------- (c) retry
RETRY = CASES["retry"]


def _retry_rows() -> list[tuple[str, dict[str, Any], bool | None, bool]]:
    rows = []
    safe_methods = set(RETRY["idempotent_methods"])
    for method in RETRY["methods"]:
        for outcome in RETRY["outcomes"]:
            for idem in (None, True, False):
                safe = (method.upper() in safe_methods) if idem is None else idem
                want = {"always": True, "never": False, "idempotent": safe}[outcome["retry"]]
                rows.append((method, outcome, idem, want))
    return rows


def test_retry_matrix() -> None:
    wrong = []
    rows = _retry_rows()
    for method, o, idem, want in rows:
        got = should_retry(
            method,
            o.get("status"),
            failure=o.get("failure"),
            detail=o.get("detail", ""),
            idempotent=idem,
        )
        if got is not want:
            wrong.append((method, o, idem, want))
    assert len(rows) >= 9 * 20 * 3
    assert not wrong, wrong[:10]


# ---------------------------------------------------------------------------- (d) settings
FIELDS = CASES["settings"]["fields"]


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f["python"])
def test_settings_default_and_names(field: dict[str, Any]) -> None:
    info = VaultSettings.model_fields[field["python"]]
    default = info.default
    if isinstance(default, Path):
        default = str(default)
    if isinstance(default, tuple):
        default = list(default)
    assert default == field["default"], field
    for name in field["env"] if "example" in field else []:
        # the environment value, read the way the TypeScript client reads it
        got = VaultSettings(**{name: field["example"][0]})
        value = getattr(got, field["python"])
        value = list(value) if isinstance(value, tuple) else value
        assert value == field["example"][1], (name, value)
    alias = info.validation_alias
    choices = (
        [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []
    )
    prefixes = tuple(CASES["settings"]["prefixes"])
    ours = [c for c in choices if c.startswith(prefixes)]
    assert ours == field["env"], (field["python"], choices)


@pytest.mark.parametrize(
    "case",
    CASES["settings"]["invalid"],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c["env"].items()),
)
def test_settings_invalid_values_raise_configuration_error(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bad values the TypeScript client refuses: one typed error naming the variable."""
    from maily_secrets.errors import ConfigurationError

    for k, v in case["env"].items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigurationError) as ei:
        VaultSettings()
    assert ei.value.variable == case["variable"]
    for v in case["env"].values():
        if "@" in v:  # a password in the address is never repeated
            assert v.split("@")[0].split(":")[-1] not in str(ei.value)


def test_settings_every_alias_has_one_of_our_prefixes() -> None:
    prefixes = tuple(CASES["settings"]["prefixes"])
    for name, info in VaultSettings.model_fields.items():
        alias = info.validation_alias
        assert isinstance(alias, AliasChoices), name
        for c in alias.choices:
            assert isinstance(c, str) and c.startswith(prefixes), (name, c)


def test_settings_cover_the_python_fields() -> None:
    """Every Python setting is in the contract, or deliberately Python-only."""
    # the snapshot, health() (its required secrets), the access log and the change feed's
    # Redis push (MAILY_SECRETS_CHANGE_PUSH, MAILY_SECRETS_CHANGE_PUSH_SECRET) exist in the
    # Python client only
    python_only = {
        "snapshot_path",
        "snapshot_interval",
        "snapshot_key",
        "required_secrets",
        "access_log_interval",
        # the change push (Redis pub/sub) is Python's only
        "change_push",
        "change_push_secret",
    }
    listed = {f["python"] for f in FIELDS}
    assert set(VaultSettings.model_fields) - python_only == listed


# ---------------------------------------------------------------------------- (e) redirects
def _render(u: URL | None) -> str | None:
    if u is None:
        return None
    port = u.port
    return f"{u.scheme}://{u.host}:{port}{u.raw_path}" + (
        f"?{u.raw_query_string}" if u.raw_query_string else ""
    )


@pytest.mark.parametrize("case", CASES["redirects"]["cases"], ids=lambda c: c["why"])
def test_redirect_rule(case: dict[str, Any]) -> None:
    got = redirect_target(case["current"], case["location"], case["members"])
    assert _render(got) == case["target"], case["why"]


# ---------------------------------------------------------------------------- the TS twin
def test_typescript_twin_agrees(ts_built: Path) -> None:  # noqa: F811
    """The same file through the TypeScript client (`node --test` on conformance.test.mjs)."""
    assert NODE is not None, "node is required (the TypeScript client is part of the project)"
    pkg = ts_built
    out = subprocess.run(
        [NODE, "--test", "--test-reporter=tap", "test/conformance.test.mjs"],
        capture_output=True,
        text=True,
        cwd=pkg,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    counts = dict(re.findall(r"^# (\w+) (\d+)$", out.stdout, re.M))
    assert int(counts.get("pass", 0)) >= 5 and counts.get("fail") == "0", counts
    assert counts.get("skipped", counts.get("skip")) == "0" and counts.get("todo") == "0", counts
