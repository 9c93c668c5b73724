"""The example FastAPI app (examples/fastapi_app) against the real session OpenBao.

The app runs in the test's event loop (httpx over ASGI, the lifespan entered as
uvicorn would), so the TCP proxy that cuts Vault off and the ManualClock that moves
the staleness bound on are both driven from here.
"""

from __future__ import annotations

import uuid

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from examples.fastapi_app.app import create_app
from maily_secrets.clock import ManualClock
from maily_secrets.vault.client import VaultClient

from .conftest import Bao
from .faultkit import drive
from .kit.listeners import new_secret
from .netfault import TcpProxy


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_example_app_metrics_readiness_and_settings_reload(
    bao: Bao, root: VaultClient
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    path = await new_secret(
        root, {"db_host": "db-1", "db_port": 5432, "db_password": canary}, prefix="example"
    )
    clock = ManualClock()
    proxy = TcpProxy.to(bao.addr)
    await proxy.up()
    app = create_app(
        settings=bao.settings(
            addr=proxy.addr,
            cache_ttl=10,
            max_staleness=100,
            max_retries=0,
            listener_interval=1,
            listener_full_poll_interval=1,  # the change below is written around the app
        ),
        config_path=path,
        registry=CollectorRegistry(),
        clock=clock,
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app") as http,
        ):
            assert (await http.get("/settings")).json() == {
                "db_host": "db-1",
                "db_port": 5432,
                "feature_flag": None,
                "reloads": 0,
            }
            service = app.state.service
            for _ in range(3):
                await service.get_secret(path)  # served from the cache
            text = (await http.get("/metrics")).text
            assert sample(text, "maily_secret_cache_reads_total", path=path, result="miss") == 1
            assert sample(text, "maily_secret_cache_reads_total", path=path, result="hit") == 3
            assert (
                sample(
                    text,
                    "maily_secret_vault_request_duration_seconds_count",
                    method="GET",
                    operation="maily/data/{name}",
                    status="200",
                )
                == 1
            )
            assert canary not in text

            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            assert (await http.get("/livez")).status_code == 200

            # A change in Vault reaches the app's settings through the listener.
            await root.kv.write(
                path, {"db_host": "db-2", "db_port": 5433, "db_password": canary}, cas=1
            )
            await drive(clock, lambda: app.state.reloads == 1, what="the settings reload")
            got = (await http.get("/settings")).json()
            assert (got["db_host"], got["db_port"], got["reloads"]) == ("db-2", 5433, 1)

            # Vault unreachable: ready while the last value is within the bound, then not.
            await proxy.down()
            await clock.advance(50)
            assert (await http.get("/readyz")).status_code == 200
            assert (await service.get_secret(path))["db_host"] == "db-2"  # a stale serve
            await clock.advance(51)
            failing = await http.get("/readyz")
            assert failing.status_code == 503
            (check,) = failing.json()["checks"]
            assert check["name"] == path and check["ok"] is False
            assert canary not in failing.text
            assert (await http.get("/livez")).status_code == 200  # nothing died: do not restart
            text = (await http.get("/metrics")).text
            assert sample(text, "maily_secret_cache_reads_total", path=path, result="stale") == 1

            await proxy.up()
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await proxy.down()
