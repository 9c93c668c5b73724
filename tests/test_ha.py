"""HA against a real 3-node OpenBao raft cluster: read-your-writes through a standby,
307 redirects from a real standby, and a leader killed under a reading service.

Nothing is mocked: ``tests/raft.py`` runs three ``bao server`` processes on
loopback.  Figures (stale reads, redirects, failed reads) are printed to the
terminal, even with ``-q``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from maily_secrets.errors import CheckAndSetConflict, SecretNotFound, VaultRequestError
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient

from .kit.ha import ReadLoop
from .raft import RaftCluster, RaftNode, api

NO_FORWARDING = "X-Vault-No-Request-Forwarding"


@pytest.fixture(scope="module")
def raft_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    """Three nodes, standby reads on (OpenBao's default), KV v2 at maily/ with cas_required."""
    cluster = RaftCluster(tmp_path_factory.mktemp("raft"))
    cluster.start(3)  # stops whatever it started if it fails
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def classic_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    """Three nodes with ``disable_standby_reads = true``: standbys handle nothing
    themselves (the pre-2.5 behaviour), so redirect-only paths answer 307."""
    cluster = RaftCluster(
        tmp_path_factory.mktemp("raft-classic"), extra_config="disable_standby_reads = true"
    )
    cluster.start(3)
    try:
        yield cluster
    finally:
        cluster.stop()


def settings(node: RaftNode, cluster: RaftCluster, **kw: Any) -> VaultSettings:
    base: dict[str, Any] = {
        "addr": node.addr,
        "token": cluster.root_token,
        "auth_method": "token",
        "max_retries": 10,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.2,
        "timeout": 5.0,
        # the operator lists the nodes: a standby's redirect is followed only to these
        "cluster_members": tuple(n.addr for n in cluster.nodes),
    }
    base.update(kw)
    return VaultSettings(**base)


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[ha] {text}", flush=True)


def wait_for_status(probe: Callable[[], int], want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := probe()) != want:
        assert time.monotonic() < deadline, f"HTTP {got}, wanted {want}"
        time.sleep(0.02)


def new_path() -> str:
    return f"maily/data/ha-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------- a. consistency
@dataclass
class Pairs:
    version: int = 0  # the last version written
    stale: list[tuple[int, int | None]] = field(default_factory=list)  # (written, read)
    conflicts: int = 0  # CAS writes the standby refused from its out-of-date copy
    seconds: float = 0.0


async def write_read_pairs(client: VaultClient, path: str, n: int) -> Pairs:
    """n check-and-set writes, each followed at once by a read of the same path.

    A standby checks a KV write's ``cas`` against its own copy before forwarding
    the write: if it has not applied our previous write yet it answers 400
    "check-and-set parameter did not match".  Such conflicts are counted and the
    write retried (bounded), so a run measures both effects.
    """
    out = Pairs()
    t0 = time.perf_counter()
    for i in range(n):
        deadline = time.monotonic() + 5
        while True:
            try:
                out.version = await client.kv.write(path, {"n": i}, cas=out.version)
                break
            except CheckAndSetConflict:
                out.conflicts += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)
        try:
            got = await client.kv.read(path)
        except SecretNotFound:
            out.stale.append((out.version, None))
            continue
        if got.version != out.version or got.data != {"n": i}:
            out.stale.append((out.version, got.version))
    out.seconds = time.perf_counter() - t0
    return out


async def concurrently(jobs: list[tuple[VaultClient, int]]) -> list[Pairs]:
    """``write_read_pairs`` on a new path per job, all at once; if one fails the others
    are cancelled (before the test closes the clients)."""
    async with asyncio.timeout(45), asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(write_read_pairs(c, new_path(), n)) for c, n in jobs]
    return [t.result() for t in tasks]


async def test_read_your_writes_through_a_standby(
    raft_cluster: RaftCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clients on a standby write (forwarded to the active node), then read at once:
    with ``consistency="index"`` (the default) every read sees the write before it,
    and no CAS write is refused by the lagging standby.  200 pairs: 4 clients x 50,
    concurrently (each read waits ~100 ms for the standby to catch up)."""
    standby = raft_cluster.standbys()[0]
    clients = [VaultClient(settings(standby, raft_cluster), consistency="index") for _ in range(4)]
    try:
        runs = await concurrently([(c, 50) for c in clients])
        retried = sum(c.stats["GET"] - 1 - 50 for c in clients)  # minus lookup-self, reads
    finally:
        for c in clients:
            await c.close()
    assert [r.version for r in runs] == [50] * 4
    assert [r.stale for r in runs] == [[]] * 4
    assert [r.conflicts for r in runs] == [0] * 4
    report(
        capsys,
        f"consistency=index via standby {standby.name}: 200/200 reads saw their write,"
        f" 0 CAS conflicts; {retried} read(s) retried on 429 'index not applied yet',"
        f" {max(r.seconds for r in runs):.1f}s",
    )


async def test_stale_reads_without_index(
    raft_cluster: RaftCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """``consistency="none"``: a standby answers from its local copy, which lags the
    active node by up to a raft heartbeat (~100 ms here).  Measured and reported."""
    leader = raft_cluster.leader()
    standby = raft_cluster.standbys()[0]
    n = 200
    # 1. another client writes through the active node; we read through the standby
    path = new_path()
    stale = 0
    async with (
        VaultClient(settings(leader, raft_cluster), consistency="none") as writer,
        VaultClient(settings(standby, raft_cluster), consistency="none") as reader,
    ):
        for i in range(n):
            v = await writer.kv.write(path, {"n": i}, cas=i)
            try:
                got = await reader.kv.read(path)
                stale += got.version != v
            except SecretNotFound:
                stale += 1
    # 2. one client on the standby writes and reads its own secret
    async with VaultClient(settings(standby, raft_cluster), consistency="none") as c:
        own = await asyncio.wait_for(write_read_pairs(c, new_path(), 20), 30)
    assert own.version == 20
    assert stale > 0  # 200 reads right after a write: some (in practice nearly all) lag
    report(
        capsys,
        f"consistency=none via standby {standby.name}: {stale}/{n} reads right after a write"
        f" through the active node were stale; a client writing through the standby itself:"
        f" {len(own.stale)}/20 own reads stale, {own.conflicts} spurious CAS conflict(s)",
    )


async def test_forward_mode_reads_its_writes(raft_cluster: RaftCluster) -> None:
    standby = raft_cluster.standbys()[0]
    async with VaultClient(settings(standby, raft_cluster), consistency="forward") as c:
        run = await asyncio.wait_for(write_read_pairs(c, new_path(), 20), 30)
    assert run.version == 20
    assert (run.stale, run.conflicts) == ([], 0)


async def test_one_client_shared_by_concurrent_writers(raft_cluster: RaftCluster) -> None:
    standby = raft_cluster.standbys()[0]
    async with VaultClient(settings(standby, raft_cluster), consistency="index") as c:
        runs = await concurrently([(c, 25)] * 8)
    assert [(r.version, r.stale, r.conflicts) for r in runs] == [(25, [], 0)] * 8


# ---------------------------------------------------------------------------- b. 307
async def test_real_standby_redirects_and_client_follows_get(
    classic_cluster: RaftCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``disable_standby_reads = true`` a standby answers the redirect-only path
    ``sys/storage/raft/snapshot`` with a real 307 to the active node; our unmodified
    client follows it with its token (the snapshot needs the root token)."""
    leader = classic_cluster.leader()
    standby = classic_cluster.standbys()[0]
    status, _ = api(
        standby.addr, "GET", "sys/storage/raft/snapshot", token=classic_cluster.root_token
    )
    assert status == 307, "the standby should redirect, not serve or forward"

    async with VaultClient(settings(standby, classic_cluster)) as c:
        await c.tokens.token()
        before = c.stats["GET"]
        r = await c.read("sys/storage/raft/snapshot")
        hops = c.stats["GET"] - before
    assert r.status == 200
    assert r.body is None  # a binary snapshot, not JSON
    assert hops == 2  # the 307 from the standby, then the active node
    report(capsys, f"GET sys/storage/raft/snapshot: 307 {standby.name} -> {leader.name}, 200")

    # without the nodes listed, the same real redirect is refused and the token stays home
    async with VaultClient(settings(standby, classic_cluster, cluster_members=())) as c:
        await c.tokens.token()
        before = c.stats["GET"]
        with pytest.raises(VaultRequestError, match="refused to follow a redirect"):
            await c.read("sys/storage/raft/snapshot")
        assert c.stats["GET"] - before == 1  # nothing was sent to the active node


class NoForwardingClient(VaultClient):
    """Asks standbys to redirect instead of forwarding (Vault's documented
    ``X-Vault-No-Request-Forwarding`` header); the client has no setting for it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._base_headers[NO_FORWARDING] = "true"


async def test_real_standby_redirects_a_write_and_client_resends_body_and_token(
    raft_cluster: RaftCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A standby asked not to forward answers a KV write with a real 307; the client
    repeats the POST, body and token included, at the active node, and it lands."""
    leader = raft_cluster.leader()
    standby = raft_cluster.standbys()[0]
    tok = raft_cluster.root_token
    path = new_path()
    status, _ = api(
        standby.addr,
        "POST",
        path,
        {"options": {"cas": 0}, "data": {"probe": "x"}},
        token=tok,
        headers={NO_FORWARDING: "true"},
    )
    assert status == 307
    assert api(leader.addr, "GET", path, token=tok)[0] == 404  # a 307 wrote nothing

    async with NoForwardingClient(settings(standby, raft_cluster)) as c:
        await c.tokens.token()
        before = c.stats["POST"]
        v1 = await c.kv.write(path, {"db_password": "s3cret-1"}, cas=0)
        v2 = await c.kv.write(path, {"db_password": "s3cret-2"}, cas=v1)
        posts = c.stats["POST"] - before
    assert (v1, v2) == (1, 2)
    assert posts >= 4  # each write: 307 from the standby, then the active node
    status, doc = api(leader.addr, "GET", path, token=tok)
    assert status == 200
    assert doc["data"]["data"] == {"db_password": "s3cret-2"}
    assert doc["data"]["metadata"]["version"] == 2
    report(capsys, f"POST {path}: 307 {standby.name} -> {leader.name}; 2 CAS writes, {posts} hops")


async def test_redirected_get_keeps_its_query_once(classic_cluster: RaftCluster) -> None:
    standby = classic_cluster.standbys()[0]
    async with NoForwardingClient(settings(standby, classic_cluster)) as c:
        path = new_path()
        await c.kv.write(path, {"n": 1}, cas=0)
        await c.kv.write(path, {"n": 2}, cas=1)
        old = await c.kv.read(path, version=1)
    assert old.data == {"n": 1}


# ---------------------------------------------------------------------------- c. leader kill
async def test_leader_killed_while_a_service_reads(
    raft_cluster: RaftCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the active node while a VaultService on a surviving standby reads in a
    loop (no cache, no stale fallback): no read fails, and the survivors elect a leader.

    Runs last in this module: it changes the cluster (the killed node is restarted
    at the end)."""
    leader = raft_cluster.leader()
    standby = raft_cluster.standbys()[0]
    tok = raft_cluster.root_token
    path = new_path()
    status, _ = api(
        leader.addr, "POST", path, {"options": {"cas": 0}, "data": {"k": "v"}}, token=tok
    )
    assert status == 200
    # the standby serves reads itself: wait until it has the secret
    await asyncio.to_thread(
        wait_for_status, lambda: api(standby.addr, "GET", path, token=tok)[0], 200
    )

    service = VaultService(
        settings(
            standby,
            raft_cluster,
            max_retries=40,
            retry_base_delay=0.05,
            retry_max_delay=0.5,
            timeout=3.0,
            cache_ttl=0,  # every read goes to Vault
            max_staleness=0,  # and a failure is not hidden by a last-known value
        )
    )
    try:
        assert await service.get_secret(path) == {"k": "v"}  # logged in before the kill
        async with ReadLoop(service, path, expect={"k": "v"}) as reads:
            await asyncio.sleep(0.5)
            killed_at = time.monotonic()
            raft_cluster.kill(leader)
            reads.killed()
            new_leader = await asyncio.to_thread(raft_cluster.leader, 20.0)
            elected_after = time.monotonic() - killed_at
            # writes work again, through the standby the service uses (once it has
            # learnt who leads: until then it answers 500 "active cluster node not found")
            await asyncio.to_thread(raft_cluster.wait_knows_leader, standby, new_leader)
            async with VaultClient(settings(standby, raft_cluster, max_retries=20)) as w:
                assert await w.kv.write(path, {"k": "v"}, cas=1) == 2
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - killed_at)))
    finally:
        await service.close()
    tally, latencies = reads.tally, reads.latencies

    report(
        capsys,
        f"leader {leader.name} SIGKILLed, {new_leader.name} active after {elected_after:.2f}s;"
        f" VaultService reading on {standby.name}: {dict(tally)},"
        f" slowest read {max(latencies):.2f}s",
    )
    assert new_leader is not leader and new_leader.alive()
    assert tally["ok before kill"] > 0 and tally["ok after kill"] > 0
    assert set(tally) == {"ok before kill", "ok after kill"}, dict(tally)

    # the killed node comes back as a standby of the new leader, with all three voting
    await asyncio.to_thread(raft_cluster.restart, leader)
    await asyncio.to_thread(raft_cluster.wait_ready, 20.0)
    assert raft_cluster.leader() is new_leader
