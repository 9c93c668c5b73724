"""A real 3-node OpenBao raft cluster on loopback, for HA tests.

    cluster = RaftCluster(tmp_dir)
    cluster.start(3)                 # init node 1, join + unseal the others, mount maily/
    cluster.leader(), cluster.standbys(), cluster.root_token
    cluster.kill(node)               # SIGKILL
    cluster.restart(node)            # start it again and unseal it
    cluster.stop()                   # SIGTERM, then SIGKILL; always call it

Everything goes through the HTTP API (``sys/init``, ``sys/unseal``, ``sys/leader``):
the unseal key and the root token never appear in a process's argv.  Every wait
is bounded.  Each node has its own api and cluster port, data directory,
config file and (private, 0600) log under the given directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maily_secrets.dev.server import bao_binary, free_port, port_in_use

from .kit.servers import kill_process, spawn_logged, stop_processes

CLUSTER_NAME = "maily-ha-test"


class RaftClusterError(RuntimeError):
    pass


@dataclass
class RaftNode:
    name: str  # also the raft node_id
    api_port: int
    cluster_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def cluster_addr(self) -> str:
        return f"https://127.0.0.1:{self.cluster_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def config_file(self) -> Path:
        return self.dir / "server.hcl"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def api(
    addr: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    opener: urllib.request.OpenerDirector | None = None,
) -> tuple[int, Any]:
    """One plain HTTP request (no redirect following): (status, decoded JSON or None).

    A connection failure gives status 0. ``opener`` (for HTTPS with a CA of the test's
    own) must not follow redirects either: build it with ``_NoRedirect``.
    """
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{addr}/v1/{path}", data=data, method=method)  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("X-Vault-Token", token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    opener = opener or urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _config(node: RaftNode, extra: str) -> str:
    return (
        f"{extra}\n"
        f'cluster_name = "{CLUSTER_NAME}"\n'
        f'api_addr     = "{node.addr}"\n'
        f'cluster_addr = "{node.cluster_addr}"\n'
        "ui = false\n"
        'log_level = "warn"\n'
        'listener "tcp" {\n'
        f'  address         = "127.0.0.1:{node.api_port}"\n'
        f'  cluster_address = "127.0.0.1:{node.cluster_port}"\n'
        "  tls_disable     = true\n"
        "}\n"
        'storage "raft" {\n'
        f"  path    = {json.dumps(str(node.dir / 'data'))}\n"
        f'  node_id = "{node.name}"\n'
        "  performance_multiplier = 1\n"
        # autopilot promotes a joined non-voter after server_stabilization_time, but
        # only when it reconciles (every 10 s by default)
        '  autopilot_reconcile_interval = "500ms"\n'
        '  autopilot_update_interval    = "500ms"\n'
        "}\n"
    )


def _wait(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RaftClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class RaftCluster:
    """n OpenBao servers with integrated (raft) storage, on 127.0.0.1."""

    def __init__(
        self, base_dir: Path, *, binary: str | None = None, extra_config: str = ""
    ) -> None:
        """``extra_config``: top-level HCL added to every node's config, e.g.
        ``disable_standby_reads = true``."""
        self.base_dir = Path(base_dir)
        self.extra_config = extra_config
        self.binary = binary or bao_binary()
        self.nodes: list[RaftNode] = []
        self.root_token: str = ""
        self._unseal_key: str = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self, n: int = 3, timeout: float = 30.0, mount_kv: bool = True) -> list[RaftNode]:
        """Start n nodes, initialise node 1, join and unseal the rest, wait for a leader.

        On any failure every process started so far is stopped before raising.
        """
        if self.nodes:
            raise RaftClusterError("cluster already started")
        try:
            self._start(n, timeout, mount_kv)
        except BaseException:
            self.stop()
            raise
        return list(self.nodes)

    def _start(self, n: int, timeout: float, mount_kv: bool) -> None:
        deadline = time.monotonic() + timeout
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o700)
        used: set[int] = set()
        for i in range(1, n + 1):
            p = _port_pair(used)
            used.update((p, p + 1))
            d = self.base_dir / f"node{i}"
            (d / "data").mkdir(parents=True, exist_ok=True)
            self.nodes.append(RaftNode(f"node{i}", p, p + 1, d))
        for node in self.nodes:
            node.config_file.write_text(_config(node, self.extra_config))
            self._spawn(node)

        first = self.nodes[0]
        _wait(
            f"{first.name} to listen",
            lambda: api(first.addr, "GET", "sys/seal-status")[0],
            _left(deadline),
        )
        status, doc = api(
            first.addr, "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}
        )
        if status != 200 or not doc:
            raise RaftClusterError(f"sys/init on {first.name}: HTTP {status} {doc}")
        self._unseal_key = str(doc["keys_base64"][0])
        self.root_token = str(doc["root_token"])
        self._unseal(first, _left(deadline))
        _wait(f"{first.name} to become active", lambda: self.is_active(first), _left(deadline))
        # Promote joining nodes to voters quickly (autopilot's default is 10 s).
        self._autopilot()
        for node in self.nodes[1:]:
            self.join(node, first, _left(deadline))
        self.wait_ready(_left(deadline))
        if mount_kv:
            self.mount_kv()

    def _spawn(self, node: RaftNode) -> None:
        argv = [self.binary, "server", f"-config={node.config_file}"]
        node.proc = spawn_logged(argv, node.log_file, cwd=node.dir)

    def join(self, node: RaftNode, leader: RaftNode, timeout: float) -> None:
        """``sys/storage/raft/join`` (what ``bao operator raft join`` does), then unseal:
        with a Shamir seal the key answers the leader's join challenge."""
        _wait(
            f"{node.name} to listen", lambda: api(node.addr, "GET", "sys/seal-status")[0], timeout
        )
        status, doc = api(
            node.addr,
            "POST",
            "sys/storage/raft/join",
            {"leader_api_addr": leader.addr},
            timeout=timeout,
        )
        if status != 200 or not (doc or {}).get("joined"):
            raise RaftClusterError(
                f"{node.name} joining {leader.name}: HTTP {status} {doc}\n{node.log_tail()}"
            )
        self._unseal(node, timeout)

    def _unseal(self, node: RaftNode, timeout: float) -> None:
        """Send the key until the node reports unsealed."""

        def attempt() -> bool:
            if not node.alive():
                raise RaftClusterError(f"{node.name} exited:\n{node.log_tail()}")
            status, doc = api(node.addr, "GET", "sys/seal-status")
            if status == 200 and doc and doc.get("initialized") and not doc.get("sealed"):
                return True
            if status == 200:
                api(node.addr, "PUT", "sys/unseal", {"key": self._unseal_key})
            return False

        try:
            _wait(f"{node.name} to unseal", attempt, timeout, interval=0.1)
        except RaftClusterError as exc:
            raise RaftClusterError(f"{exc}\n{node.log_tail()}") from None

    def _autopilot(self) -> None:
        status, doc = api(
            self.nodes[0].addr,
            "POST",
            "sys/storage/raft/autopilot/configuration",
            {"server_stabilization_time": "1s", "cleanup_dead_servers": False},
            token=self.root_token,
        )
        if status not in (200, 204):
            raise RaftClusterError(f"autopilot configuration: HTTP {status} {doc}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node we started, SIGKILL those still alive after ``timeout``."""
        stop_processes([node.proc for node in self.nodes], timeout)

    def kill(self, node: RaftNode) -> None:
        """SIGKILL one node (no graceful step-down) and reap it."""
        kill_process(node.proc)

    def restart(self, node: RaftNode, timeout: float = 20.0) -> None:
        """Start a killed node again with its data and unseal it; it rejoins as a standby."""
        if node.alive():
            raise RaftClusterError(f"{node.name} is still running")
        self._spawn(node)
        _wait(
            f"{node.name} to listen", lambda: api(node.addr, "GET", "sys/seal-status")[0], timeout
        )
        self._unseal(node, timeout)

    # ------------------------------------------------------------------ state
    def live(self) -> list[RaftNode]:
        return [n for n in self.nodes if n.alive()]

    def is_active(self, node: RaftNode) -> bool:
        """sys/health answers 200 only on the unsealed active node."""
        status, _ = api(node.addr, "GET", "sys/health", timeout=2)
        return status == 200

    def leader(self, timeout: float = 15.0) -> RaftNode:
        """The active node (waits, bounded, while an election runs)."""

        def find() -> RaftNode | None:
            for node in self.live():
                status, doc = api(node.addr, "GET", "sys/leader", timeout=2)
                if status == 200 and doc and doc.get("is_self"):
                    return node
            return None

        found: RaftNode = _wait("a leader", find, timeout)
        return found

    def wait_knows_leader(self, node: RaftNode, leader: RaftNode, timeout: float = 20.0) -> None:
        """Wait (bounded) until ``node`` names ``leader`` as the active node: a standby
        learns of a new leader a moment after the election, and forwards writes only then."""

        def knows() -> bool:
            status, doc = api(node.addr, "GET", "sys/leader", timeout=2)
            return status == 200 and bool(doc) and doc.get("leader_address") == leader.addr

        _wait(f"{node.name} to know the leader {leader.name}", knows, timeout)

    def standbys(self) -> list[RaftNode]:
        lead = self.leader()
        return [n for n in self.live() if n is not lead]

    def raft_peers(self) -> list[dict[str, Any]]:
        status, doc = api(
            self.leader().addr, "GET", "sys/storage/raft/configuration", token=self.root_token
        )
        if status != 200 or not doc:
            raise RaftClusterError(f"sys/storage/raft/configuration: HTTP {status}")
        return list(doc["data"]["config"]["servers"])

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Every live node unsealed, one active, the others standbys that know the
        leader, and every live node a raft voter (so losing the leader keeps quorum)."""
        live = self.live()

        def ready() -> bool:
            lead = self.leader(timeout=timeout)
            for node in live:
                status, doc = api(node.addr, "GET", "sys/leader", timeout=2)
                if status != 200 or not doc or doc.get("leader_address") != lead.addr:
                    return False
                if node is not lead and api(node.addr, "GET", "sys/health", timeout=2)[0] != 429:
                    return False
            names = {n.name for n in live}
            voters = {p["node_id"] for p in self.raft_peers() if p.get("voter")}
            return names <= voters

        _wait("the cluster to be ready", ready, timeout, interval=0.1)

    def mount_kv(self, mount: str = "maily") -> None:
        """KV v2 at ``mount`` with check-and-set required and every version kept."""
        addr, tok = self.leader().addr, self.root_token
        status, doc = api(
            addr,
            "POST",
            f"sys/mounts/{mount}",
            {"type": "kv", "options": {"version": "2"}},
            token=tok,
        )
        if status not in (200, 204):
            raise RaftClusterError(f"mounting {mount}: HTTP {status} {doc}")

        def configured() -> bool:  # the engine upgrades itself right after mounting
            s, _ = api(
                addr,
                "POST",
                f"{mount}/config",
                {"cas_required": True, "max_versions": 1000000},
                token=tok,
            )
            return s in (200, 204)

        _wait(f"{mount}/config", configured, 10, interval=0.1)

        # Standbys serve the mount themselves once they see the upgraded engine;
        # until then they answer 400 "Waiting for the primary to upgrade".
        def served_everywhere() -> bool:
            for node in self.live():
                s, doc = api(node.addr, "GET", f"{mount}/config", token=tok)
                if s != 200 or not (doc or {}).get("data", {}).get("cas_required"):
                    return False
            return True

        _wait(f"{mount}/ on every node", served_everywhere, 15, interval=0.1)


def _port_pair(used: set[int]) -> int:
    """A free port p with p+1 free too, *below* the kernel's ephemeral range.

    ``dev.server.free_port`` hands out ports from the ephemeral range; a node binds
    its cluster port only once unsealed, and meanwhile the other nodes' outgoing
    connections can take that very port ("bind: address already in use").
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low > 12000:
        for _ in range(200):
            p = random.randrange(10000, low - 2)
            if p in used or p + 1 in used:
                continue
            if _bindable(p) and _bindable(p + 1):
                return p
    return free_port()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_in_use(port)


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())
