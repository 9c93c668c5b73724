"""A rotation environment for tests: its own KV mount on the real OpenBao and a config file.

``production`` and ``development`` both point at the test server (the guide's
commands run verbatim against it); everything lives under a mount of its own so
tests do not see each other's rotations.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maily_secrets.bootstrap import BootstrapReport, ensure_secret, sample_secrets
from maily_secrets.paths import KV2Path
from maily_secrets.rotation.config import RotationConfig
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .kit.cli import mailyctl_argv as mailyctl_argv  # re-exported for the tests

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "src" / "maily_secrets" / "rotation" / "default_config.yaml"


@dataclass
class RotationEnv:
    bao: Bao
    mount: str
    config_path: Path
    doc: dict[str, Any] = field(repr=False)

    def config(self) -> RotationConfig:
        return RotationConfig.load(self.config_path)

    def client(self) -> VaultClient:
        return self.bao.client(kv_mount=self.mount)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `mailyctl` subprocess using this rotation environment."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        base.pop(CRASH_KEY, None)
        base.update(
            {
                "VAULT_TOKEN": self.bao.token,
                "MAILY_ROTATION_CONFIG": str(self.config_path),
                "COLUMNS": "200",
            }
        )
        base.update(extra)
        return base

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.doc, sort_keys=False))


CRASH_KEY = "MAILY_ROTATION_CRASH_AFTER"


async def make_rotation_env(
    bao: Bao,
    root: VaultClient,
    tmp: Path,
    *,
    types: dict[str, Any] | None = None,
    intervals: dict[str, str] | None = None,
) -> RotationEnv:
    mount = "rot-" + uuid.uuid4().hex[:8]
    await root.write(f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
    await root.kv.configure(mount)
    report = BootstrapReport()
    for name, data in sample_secrets().items():
        await ensure_secret(root, KV2Path(mount, name), data, report)
    doc = yaml.safe_load(DEFAULT_YAML.read_text())
    vault = {"addr": bao.addr, "kv_mount": mount, "auth_method": "token"}
    for env in doc["environments"].values():
        env["vault"] = dict(vault)
        env["lock_ttl"] = "30s"
    if types is not None:
        doc["types"] = types
        doc["defaults"]["intervals"] = {
            t: doc["defaults"]["intervals"].get(t, "30d") for t in types
        }
        for env in doc["environments"].values():
            env.pop("intervals", None)
    if intervals:
        doc["defaults"]["intervals"].update(intervals)
    renv = RotationEnv(bao, mount, tmp / f"rotation-{mount}.yaml", doc)
    renv.write()
    return renv
