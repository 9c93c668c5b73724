"""A FastAPI service on Maily Secrets: lifespan, ``/metrics``, ``/readyz``, ``/livez``,
and settings that a secret listener reloads when the config changes in Vault.

Run it (``pip install 'maily-secrets[metrics]' fastapi uvicorn``)::

    VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=... \\
        uvicorn examples.fastapi_app.app:app --port 8000

Kubernetes probes: ``readinessProbe`` on ``/readyz`` (503 while a required secret
cannot be served within ``MAILY_SECRETS_MAX_STALENESS``), ``livenessProbe`` on
``/livez`` (503 when a background task of the service died); Prometheus scrapes
``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError

from maily_secrets.clock import Clock
from maily_secrets.metrics import ServiceMetrics
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings

log = logging.getLogger("example.fastapi_app")


class AppSettings(BaseModel):
    """What this app takes from ``maily/data/config`` (the other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    db_host: str
    db_port: int = 5432
    feature_flag: str | None = None


def create_app(
    *,
    settings: VaultSettings | None = None,
    config_path: str | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The app; ``registry`` defaults to prometheus_client's global one (one app per
    process then), ``config_path`` to ``<mount>/data/config``, ``clock`` to the real one."""
    reg = registry if registry is not None else REGISTRY
    observers: list[ServiceMetrics] = []  # registered once, on the first start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not observers:
            observers.append(ServiceMetrics(reg))
        service = VaultService(settings, clock=clock, observer=observers[0])
        path = config_path or f"{service.kv_mount}/data/config"
        service.require(path)  # /readyz fails while the config cannot be served
        app.state.service = service
        app.state.settings = AppSettings.model_validate(await service.get_secret(path))
        app.state.reloads = 0

        def reload(new: dict[str, Any]) -> None:
            try:
                app.state.settings = AppSettings.model_validate(new)
            except ValidationError as exc:  # keep serving with the settings we have
                log.warning("config change rejected: %d invalid field(s)", exc.error_count())
                return
            app.state.reloads += 1

        await service.register_secret_listener(path, reload)
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="Maily Secrets example", lifespan=lifespan)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        health = await request.app.state.service.readiness()
        return JSONResponse(health.to_dict(), status_code=200 if health.ready else 503)

    @app.get("/livez")
    async def livez(request: Request) -> JSONResponse:
        health = request.app.state.service.liveness()
        return JSONResponse(health.to_dict(), status_code=200 if health.live else 503)

    @app.get("/settings")
    async def current_settings(request: Request) -> dict[str, Any]:
        """The non-secret settings in use, and how often a change reloaded them."""
        s: AppSettings = request.app.state.settings
        return {**s.model_dump(), "reloads": request.app.state.reloads}

    return app


# For ``uvicorn examples.fastapi_app.app:app``: building it does no I/O and registers no
# metric (both happen in the lifespan, when the server starts it).
app = create_app()
