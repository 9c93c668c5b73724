"""The production server configs in ``deploy/vault/server/`` really start.

Each file is rendered for loopback by plain text substitution of the values that
depend on where it runs, and nothing else:

* listener addresses ``0.0.0.0:8200/8201`` -> ``127.0.0.1:<free ports>``;
* ``api_addr`` / ``cluster_addr`` and the ``retry_join`` ``leader_api_addr`` URLs
  (``https://vault-N.vault-internal.vault.svc:820x``) -> node N's loopback ports;
* ``/vault/tls/``, ``/vault/data`` -> a temporary directory, ``/vault/audit/`` -> the
  relative ``audit/`` (each server runs in its own directory; see ``render``), with
  a self-signed CA and a server certificate (SANs: 127.0.0.1 and every host name the
  file uses, including the ``leader_tls_servername`` values) made here;
* ``service_registration "kubernetes"`` is dropped: it labels the pod through the
  Kubernetes API (it needs the pod's service account and ``BAO_K8S_POD_NAME``),
  and the server refuses to start without one;
* for speed only, ``performance_multiplier = 1`` and short autopilot intervals are
  added to the raft stanza (the production default, 5, makes elections 5x slower).

The HA file has no ``api_addr``, ``cluster_addr`` or ``node_id``: in the cluster
they come from the pod (environment), so here ``BAO_API_ADDR``,
``BAO_CLUSTER_ADDR`` and ``BAO_RAFT_NODE_ID`` are set per process (OpenBao reads
the ``BAO_`` names; the file's header mentions the ``VAULT_`` ones).

Then real ``bao server -config=<rendered>`` processes run; init and unseal go
through the HTTPS API verified against the CA (keys and tokens never in argv).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from maily_secrets.dev.server import bao_binary
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.ha import ReadLoop
from .kit.servers import kill_process, spawn_logged, stop_processes
from .raft import RaftClusterError, _NoRedirect, _port_pair, _wait
from .raft import api as raft_api

SERVER_DIR = Path(__file__).resolve().parents[1] / "deploy" / "vault" / "server"
SINGLE = SERVER_DIR / "vault.hcl"
HA = SERVER_DIR / "vault-ha.hcl"


# ---------------------------------------------------------------------------- PKI
@dataclass
class Pki:
    dir: Path  # stands in for /vault/tls/: ca.crt, tls.crt, tls.key

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"


def hostnames(text: str) -> set[str]:
    """Every host name the config uses (URLs and leader_tls_servername)."""
    names = set(re.findall(r"https://([A-Za-z0-9.-]+):\d+", text))
    names |= set(re.findall(r'leader_tls_servername\s*=\s*"([^"]+)"', text))
    return names


def make_pki(d: Path, names: set[str]) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maily test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName(n) for n in sorted(names | {"localhost"})]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "tls.crt").write_bytes(cert.public_bytes(pem))
    fd = os.open(d / "tls.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return Pki(d)


# ---------------------------------------------------------------------------- rendering
def _sub(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} not in the config any more: update the test"
    return text.replace(old, new)


SPEED = (
    'storage "raft" {\n'
    "  # test only: fast elections and autopilot\n"
    "  performance_multiplier       = 1\n"
    '  autopilot_reconcile_interval = "500ms"\n'
    '  autopilot_update_interval    = "500ms"\n'
)


def render(text: str, *, node_dir: Path, pki: Pki, ports: list[tuple[int, int]], me: int) -> str:
    """Loopback version of a production config for node ``me`` of ``ports``."""
    api_port, cluster_port = ports[me]
    out = _sub(text, '"0.0.0.0:8200"', f'"127.0.0.1:{api_port}"')
    out = _sub(out, '"0.0.0.0:8201"', f'"127.0.0.1:{cluster_port}"')
    for i, (a, c) in enumerate(ports):
        out = out.replace(
            f"https://vault-{i}.vault-internal.vault.svc:8200", f"https://127.0.0.1:{a}"
        )
        out = out.replace(
            f"https://vault-{i}.vault-internal.vault.svc:8201", f"https://127.0.0.1:{c}"
        )
    out = _sub(out, "/vault/tls/", f"{pki.dir}/")
    out = _sub(out, '"/vault/data"', json.dumps(str(node_dir / "data")))
    # The audit table is replicated: a node refuses to become active if its declarative
    # audit options differ from the table's (OpenBao: "modifications to audit devices
    # are not allowed ... file_path differs").  Every pod has the same /vault/audit/ on
    # its own volume; here the same *relative* path, each server's cwd being its dir.
    out = _sub(out, "/vault/audit/", "audit/")
    # Needs a Kubernetes API (pod service account + BAO_K8S_POD_NAME); without one
    # the server exits at start-up.  Not testable on loopback.
    out = re.sub(r'service_registration\s+"kubernetes"\s*\{[^}]*\}\n?', "", out)
    out = _sub(out, 'storage "raft" {\n', SPEED)
    leftovers = re.findall(r"0\.0\.0\.0|/vault/|\.svc:|service_registration", out)
    assert not leftovers, f"environment-specific values left in the rendered config: {leftovers}"
    return out


# ---------------------------------------------------------------------------- processes
@dataclass
class Node:
    name: str
    api_port: int
    cluster_port: int
    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def config(self) -> Path:
        return self.dir / "server.hcl"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit" / "audit.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def start(self) -> None:
        argv = [bao_binary(), "server", f"-config={self.config}"]
        self.proc = spawn_logged(argv, self.log, cwd=self.dir, env=self.env)

    def kill(self) -> None:
        kill_process(self.proc)


def stop_all(nodes: list[Node], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``timeout``."""
    stop_processes([n.proc for n in nodes], timeout)


def make_nodes(base: Path, source: Path, pki: Pki, n: int, *, ha: bool) -> list[Node]:
    used: set[int] = set()
    ports: list[tuple[int, int]] = []
    for _ in range(n):
        p = _port_pair(used)
        used.update((p, p + 1))
        ports.append((p, p + 1))
    text = source.read_text()
    nodes = []
    for i, (a, c) in enumerate(ports):
        d = base / f"vault-{i}"
        (d / "data").mkdir(parents=True)
        (d / "audit").mkdir()
        os.chmod(d, 0o700)
        node = Node(f"vault-{i}", a, c, d)
        if ha:  # from the pod in Kubernetes (see the file's header)
            node.env = {
                "BAO_API_ADDR": f"https://127.0.0.1:{a}",
                "BAO_CLUSTER_ADDR": f"https://127.0.0.1:{c}",
                "BAO_RAFT_NODE_ID": node.name,
            }
        node.config.write_text(render(text, node_dir=d, pki=pki, ports=ports, me=i))
        nodes.append(node)
    return nodes


# ---------------------------------------------------------------------------- HTTPS API
class Api:
    """tests.raft.api over HTTPS, verified against our CA (status 0: no connection)."""

    def __init__(self, ca: Path | None) -> None:
        """``ca=None``: the system's trust store only."""
        self.ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.ctx), _NoRedirect
        )
        self.token: str = ""
        self.key: str = ""

    def __call__(
        self,
        node: Node,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = True,
        timeout: float = 5.0,
    ) -> tuple[int, Any]:
        token = self.token if auth and self.token else None
        return raft_api(
            node.addr, method, path, body, token=token, timeout=timeout, opener=self.opener
        )

    def listening(self, node: Node, timeout: float) -> None:
        def up() -> bool:
            if not node.alive():
                raise RaftClusterError(f"{node.name} exited:\n{node.tail()}")
            return self(node, "GET", "sys/seal-status", auth=False)[0] == 200

        _wait(f"{node.name} to answer over TLS", up, timeout)

    def init(self, node: Node) -> None:
        status, doc = self(node, "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        assert status == 200 and doc, f"sys/init: HTTP {status} {doc}\n{node.tail()}"
        self.key, self.token = str(doc["keys_base64"][0]), str(doc["root_token"])

    def unseal(self, node: Node, timeout: float) -> None:
        """Send the key until unsealed (a retry_join node first needs the leader's
        challenge, which the key then answers)."""

        def attempt() -> bool:
            if not node.alive():
                raise RaftClusterError(f"{node.name} exited:\n{node.tail()}")
            status, doc = self(node, "GET", "sys/seal-status", auth=False)
            if status == 200 and doc and doc.get("initialized") and not doc.get("sealed"):
                return True
            if status == 200:
                self(node, "PUT", "sys/unseal", {"key": self.key}, auth=False)
            return False

        try:
            _wait(f"{node.name} to unseal", attempt, timeout, interval=0.2)
        except RaftClusterError as exc:
            raise RaftClusterError(f"{exc}\n{node.tail()}") from None

    def health(self, node: Node) -> int:
        return self(node, "GET", "sys/health", auth=False, timeout=2)[0]

    def leader(self, nodes: list[Node], timeout: float) -> Node:
        def find() -> Node | None:
            for n in nodes:
                if n.alive():
                    s, doc = self(n, "GET", "sys/leader", auth=False, timeout=2)
                    if s == 200 and doc and doc.get("is_self"):
                        return n
            return None

        found: Node = _wait("a leader", find, timeout)
        return found

    def mount_kv(self, node: Node) -> None:
        s, doc = self(node, "POST", "sys/mounts/maily", {"type": "kv", "options": {"version": "2"}})
        assert s in (200, 204), f"mount: HTTP {s} {doc}"
        _wait(  # the engine upgrades itself right after mounting
            "maily/config",
            lambda: self(node, "POST", "maily/config", {"cas_required": True})[0] in (200, 204),
            10,
            interval=0.1,
        )


def settings(node: Node, api: Api, ca: Path, **kw: Any) -> VaultSettings:
    base: dict[str, Any] = {
        "addr": node.addr,
        "token": api.token,
        "cacert": ca,
        "auth_method": "token",
        "max_retries": 10,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.2,
        "timeout": 5.0,
    }
    base.update(kw)
    return VaultSettings(**base)


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[server-configs] {text}", flush=True)


# ---------------------------------------------------------------------------- vault.hcl
@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Api, Pki]]:
    base = tmp_path_factory.mktemp("vault-single")
    pki = make_pki(base / "tls", hostnames(SINGLE.read_text()))
    nodes = make_nodes(base, SINGLE, pki, 1, ha=False)
    api = Api(pki.ca)
    try:
        node = nodes[0]
        node.start()
        api.listening(node, 15)
        api.init(node)
        api.unseal(node, 15)
        _wait("vault-0 active", lambda: api.health(node) == 200, 15)
        yield node, api, pki
    finally:
        stop_all(nodes)


def test_single_node_initialized_unsealed_on_raft(single: tuple[Node, Api, Pki]) -> None:
    node, api, _ = single
    s, seal = api(node, "GET", "sys/seal-status", auth=False)
    assert s == 200
    assert seal["initialized"] is True and seal["sealed"] is False
    assert seal["storage_type"] == "raft"
    s, doc = api(node, "GET", "sys/storage/raft/configuration")
    assert s == 200, doc
    servers = doc["data"]["config"]["servers"]
    assert [(p["node_id"], p["leader"], p["voter"]) for p in servers] == [("vault-0", True, True)]
    assert servers[0]["address"] == f"127.0.0.1:{node.cluster_port}"
    # api_addr from the file (rendered): what a standby would redirect clients to
    s, lead = api(node, "GET", "sys/leader", auth=False)
    assert lead["leader_address"] == node.addr
    # the listener really is TLS with our CA: an unverified-CA client is refused
    assert Api(None)(node, "GET", "sys/health", auth=False)[0] == 0


def test_single_node_declarative_audit_device(single: tuple[Node, Api, Pki]) -> None:
    node, api, _ = single
    s, doc = api(node, "GET", "sys/audit")
    assert s == 200, doc
    devices = doc.get("data", doc)
    assert "file/" in devices, devices
    assert devices["file/"]["type"] == "file"
    assert devices["file/"]["options"]["file_path"] == "audit/audit.log"
    marker = f"audit-{uuid.uuid4().hex}"
    api(node, "GET", f"sys/mounts/{marker}")  # any authenticated request is logged

    def logged() -> list[str]:
        with contextlib.suppress(OSError):
            return [ln for ln in node.audit_log.read_text().splitlines() if marker in ln]
        return []

    lines = _wait("the request in the audit log", logged, 10)
    assert json.loads(lines[0])["type"] in ("request", "response")
    assert node.audit_log.stat().st_mode & 0o777 == 0o600
    assert api.token not in node.audit_log.read_text()  # the token is HMAC'd


async def test_single_node_vault_client_over_tls(
    single: tuple[Node, Api, Pki], capsys: pytest.CaptureFixture[str]
) -> None:
    node, api, pki = single
    await asyncio.to_thread(api.mount_kv, node)
    path = f"maily/data/cfg-{uuid.uuid4().hex[:8]}"
    async with VaultClient(settings(node, api, pki.ca)) as c:
        assert await c.kv.write(path, {"db_password": "s3cret"}, cas=0) == 1
        got = await c.kv.read(path)
    assert (got.version, got.data) == (1, {"db_password": "s3cret"})
    audit = node.audit_log.read_text()
    assert path.split("/", 2)[2] in audit and "s3cret" not in audit  # logged, values HMAC'd
    report(
        capsys,
        f"vault.hcl: 1 node on raft over TLS, audit device file/ ->"
        f" {len(audit.splitlines())} audit lines, VaultClient KV write+read ok",
    )


# ---------------------------------------------------------------------------- vault-ha.hcl
@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Node], Api, Pki]]:
    base = tmp_path_factory.mktemp("vault-ha")
    pki = make_pki(base / "tls", hostnames(HA.read_text()))
    nodes = make_nodes(base, HA, pki, 3, ha=True)
    api = Api(pki.ca)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            api.listening(n, 15)
        first = nodes[0]
        api.init(first)
        api.unseal(first, 15)
        _wait("vault-0 active", lambda: api.health(first) == 200, 15)
        # test only: promote joined non-voters after 1 s, not 10 s
        s, doc = api(
            first,
            "POST",
            "sys/storage/raft/autopilot/configuration",
            {"server_stabilization_time": "1s", "cleanup_dead_servers": False},
        )
        assert s in (200, 204), doc
        for n in nodes[1:]:  # they join through retry_join; the key answers the challenge
            api.unseal(n, 20)
        yield nodes, api, pki
    finally:
        stop_all(nodes)


def wait_ready(nodes: list[Node], api: Api, timeout: float) -> Node:
    """One active node; every other live node a standby that knows it; all live voters."""
    live = [n for n in nodes if n.alive()]

    def ready() -> Node | None:
        lead = api.leader(live, timeout)
        for n in live:
            s, doc = api(n, "GET", "sys/leader", auth=False, timeout=2)
            if s != 200 or (doc or {}).get("leader_address") != lead.addr:
                return None
            if n is not lead and api.health(n) != 429:
                return None
        s, doc = api(lead, "GET", "sys/storage/raft/configuration")
        if s != 200:
            return None
        voters = {p["node_id"] for p in doc["data"]["config"]["servers"] if p["voter"]}
        return lead if {n.name for n in live} <= voters else None

    found: Node = _wait("the cluster to be ready", ready, timeout, interval=0.2)
    return found


def test_ha_three_nodes_join_one_leader_two_standbys(
    ha: tuple[list[Node], Api, Pki], capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, api, _ = ha
    lead = wait_ready(nodes, api, 25)
    s, doc = api(lead, "GET", "sys/storage/raft/configuration")
    assert s == 200, doc
    servers = doc["data"]["config"]["servers"]
    assert sorted((p["node_id"], p["voter"]) for p in servers) == [
        ("vault-0", True),
        ("vault-1", True),
        ("vault-2", True),
    ]
    assert [p["node_id"] for p in servers if p["leader"]] == [lead.name]
    assert sorted(api.health(n) for n in nodes) == [200, 429, 429]
    for n in nodes:
        _, seal = api(n, "GET", "sys/seal-status", auth=False)
        assert (seal["storage_type"], seal["sealed"]) == ("raft", False)
        _, devs = api(n, "GET", "sys/audit")
        assert "file/" in devs.get("data", devs), f"{n.name}: {devs}"
    report(capsys, f"vault-ha.hcl: 3 voters joined via retry_join over TLS, leader {lead.name}")


async def test_ha_leader_sigkill_while_a_service_reads(
    ha: tuple[list[Node], Api, Pki], capsys: pytest.CaptureFixture[str]
) -> None:
    nodes, api, pki = ha
    leader = await asyncio.to_thread(wait_ready, nodes, api, 25)
    standby = next(n for n in nodes if n is not leader)
    await asyncio.to_thread(api.mount_kv, leader)
    path = f"maily/data/ha-{uuid.uuid4().hex[:8]}"
    s, doc = api(leader, "POST", path, {"options": {"cas": 0}, "data": {"k": "v"}})
    assert s == 200, doc
    await asyncio.to_thread(  # the standby serves reads itself once it has the secret
        _wait, "the secret on the standby", lambda: api(standby, "GET", path)[0] == 200, 15
    )
    service = VaultService(
        settings(
            standby,
            api,
            pki.ca,
            max_retries=40,
            retry_base_delay=0.05,
            retry_max_delay=0.5,
            timeout=3.0,
            cache_ttl=0,
            max_staleness=0,
        )
    )
    try:
        assert await service.get_secret(path) == {"k": "v"}
        async with ReadLoop(service, path, expect={"k": "v"}) as reads:
            await asyncio.sleep(0.5)
            killed_at = time.monotonic()
            leader.kill()  # SIGKILL
            reads.killed()
            survivors = [n for n in nodes if n is not leader]
            new_leader = await asyncio.to_thread(api.leader, survivors, 20.0)
            elected_after = time.monotonic() - killed_at
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - killed_at)))
    finally:
        await service.close()
    tally, latencies = reads.tally, reads.latencies
    failed = sum(v for k, v in tally.items() if not k.startswith("ok"))
    report(
        capsys,
        f"vault-ha.hcl: leader {leader.name} SIGKILLed, {new_leader.name} active after"
        f" {elected_after:.2f}s; VaultService on {standby.name}: {failed} failed reads"
        f" of {sum(tally.values())} {dict(tally)}, slowest {max(latencies):.2f}s",
    )
    assert new_leader is not leader and new_leader.alive()
    assert tally["ok before kill"] > 0 and tally["ok after kill"] > 0
    assert failed == 0, dict(tally)
