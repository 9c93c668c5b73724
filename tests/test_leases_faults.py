"""The lease container under faults: long outages, listeners that block, secrets in repr.

Real OpenBao and a private PostgreSQL cluster (``tests.pg``); the container's time
is a ManualClock, so a day of outage takes seconds and no test waits on real time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from maily_secrets.clock import ManualClock, settle
from maily_secrets.leases import LeaseContainer, LeaseEvent
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.database import DatabaseCredentials

from .conftest import Bao
from .faultkit import drive, until
from .kit.leases import LeaseEvents
from .netfault import TcpProxy
from .pg import PgServer, pg
from .secrecy import assert_absent
from .test_database import engine, password

__all__ = ["pg"]  # the session fixture, imported for pytest


async def test_lease_survives_5000_failed_renewals_and_fetches_then_rotates(
    bao: Bao, root: VaultClient, pg: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Old code: ``base * 2**attempt`` raised OverflowError after 1,024 failed attempts."""
    db, role = await engine(root, pg, default_ttl=3600, max_ttl=86400)
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    clock = ManualClock()
    events = LeaseEvents()
    client = VaultClient(
        bao.settings(addr=proxy.addr, max_retries=0, retry_base_delay=0.001, retry_max_delay=0.001)
    )
    container = LeaseContainer(client, clock=clock)
    container.add_listener(events)
    first: DatabaseCredentials | None = None
    second: DatabaseCredentials | None = None
    try:
        handle = await container.database_credentials(role, mount=db.mount)
        first = handle.secret
        await proxy.down()
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="maily_secrets"):
            await drive(clock, lambda: events.count("error") >= 5000, within=120, what="5000")
        outage_s, outage_clock = time.monotonic() - started, clock.monotonic() - 1_000
        assert events.count("expired") == 1  # the lease ran out meanwhile (3600 s)
        assert handle.task is not None and not handle.task.done()
        errors = [e.error for e in events.events if e.kind == "error"]
        assert all(e.startswith("VaultUnavailable") for e in errors), {
            e.split(":")[0] for e in errors
        }
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        await proxy.up()
        await drive(clock, lambda: events.count("rotated") == 1, what="rotation after outage")
        second = handle.secret
        assert second.username != first.username
        assert pg.try_login(second.username, password(second))
        assert handle.state == "active"
    finally:
        await container.close()
        await client.close()
        await proxy.down()
        for creds in (first, second):
            if creds is not None:  # the first one expired on our clock, not on Vault's
                await root.request(
                    "PUT", "sys/leases/revoke", json_body={"lease_id": creds.lease_id}
                )
    assert second is not None and not pg.role_exists(second.username)
    print(f"5000 failed attempts in {outage_s:.1f}s real, {outage_clock / 3600:.1f}h of clock")


async def test_a_sync_lease_listener_blocked_forever_stops_neither_renewal_nor_other_listeners(
    root: VaultClient, pg: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    db, role = await engine(root, pg, default_ttl=60, max_ttl=600)
    clock = ManualClock()
    container = LeaseContainer(root, clock=clock, listener_timeout=5.0)
    never = threading.Event()
    blocked_calls: list[str] = []
    other = LeaseEvents()

    def blocked(event: LeaseEvent[Any]) -> None:
        blocked_calls.append(event.kind)
        never.wait(60)

    container.add_listener(blocked)
    container.add_listener(other)
    creds: DatabaseCredentials | None = None
    try:
        with caplog.at_level(logging.WARNING, logger="maily_secrets.leases"):
            request = container.database_credentials(role, mount=db.mount)
            task = asyncio.ensure_future(request)
            await until(lambda: blocked_calls == ["created"], what="the blocked listener")
            await settle()
            assert not task.done()  # waits for the listener up to listener_timeout
            await clock.advance(5.1)
            handle = await task
            creds = handle.secret
            assert other.kinds() == ["created"]
            slow = [r for r in caplog.records if "still running" in r.getMessage()]
            assert len(slow) == 1 and getattr(slow[0], "listener", "").endswith("blocked")
            # the lease's task goes on: renewed at 2/3 of 60 s although a listener hangs
            await drive(clock, lambda: other.count("renewed") >= 2, what="renewals")
        assert blocked_calls == ["created"]  # still stuck in its first call: others wait
        assert pg.try_login(creds.username, password(creds))
        never.set()
        # once unblocked, the stuck listener gets the events it missed, in order
        await until(lambda: blocked_calls[:3] == ["created", "renewed", "renewed"], within=10)
    finally:
        never.set()
        await container.close()
    assert creds is not None and not pg.role_exists(creds.username)


def test_lease_event_and_handles_show_no_secret_in_repr() -> None:
    canary = "canary-" + "5ecret-" + str(id(object()))

    class Leaky:
        """A leased secret type whose own repr shows everything (a user's type)."""

        lease_id = "database/creds/app/abc"
        lease_duration = 60
        renewable = True

        def __repr__(self) -> str:
            return f"Leaky(password={canary!r})"

        @property
        def secret_values(self) -> tuple[str, ...]:
            return (canary,)

    from maily_secrets.leases import Lease, LeasedData, ManagedLease

    lease = Lease("database/creds/app/abc", 60.0, True, 1.0, 2.0)
    secret = Leaky()
    event: LeaseEvent[Any] = LeaseEvent("rotated", "k", secret, lease, previous=secret)
    handle = ManagedLease("k", lambda: None, secret, lease)  # type: ignore[arg-type,return-value]
    handle.retired.append((secret, lease))
    data = LeasedData("aws/creds/x", {"secret_key": canary}, "aws/creds/x/1", 60, True)
    for obj in (event, handle, data, lease):
        for text in (repr(obj), str(obj), f"{obj}"):
            assert_absent(canary, text, f"repr of {type(obj).__name__}")
    assert "rotated" in repr(event) and "'k'" in repr(event)
