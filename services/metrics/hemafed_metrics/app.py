"""The metrics service's FastAPI application (a factory: nothing is opened at import).

Run with ``uvicorn hemafed_metrics.app:create_app --factory --host 0.0.0.0 --port 8000``.
The paths ``/`` and ``/static`` are left free for the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from hemafed import security
from hemafed.logs import setup_logging
from hemafed.resources import sample_process
from hemafed_metrics.collector import StoreCollector
from hemafed_metrics.deps import WritesAuthenticated
from hemafed.web import BodySizeLimitMiddleware
from hemafed_metrics.routes import health, metrics, pages, predict, resources, rounds, runs
from hemafed_metrics.routes.health import VERSION
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import MetricsStore, RunExists, RunNotFound, SQLiteStore
from hemafed_metrics.upstream import AggregatorProxy

log = logging.getLogger(__name__)


async def record_own_resources(store: MetricsStore, service: str, interval: float) -> None:
    """Sample this process every ``interval`` s straight into ``store`` (until cancelled)."""
    while True:
        try:
            sample = await asyncio.to_thread(sample_process, service)
            await asyncio.to_thread(store.add_resource_samples, [sample])
        except Exception:
            log.exception("recording the metrics service's own resources failed")
        await asyncio.sleep(interval)


def create_app(settings: MetricsSettings | None = None, store: MetricsStore | None = None) -> FastAPI:
    """Build the app. With ``store`` given it is used as is (and not closed); otherwise the
    lifespan opens a :class:`SQLiteStore` at ``settings.db_path`` and closes it on shutdown.
    The lifespan also records the service's own resource samples every ``sample_interval``."""
    settings = settings or MetricsSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.service_name)  # JSON lines, e.g. the refused requests (hemafed.security)
        own_store = store is None
        app.state.store = (
            store if store is not None else await asyncio.to_thread(SQLiteStore, settings.db_path)
        )
        sampler = None
        if settings.sample_interval > 0:
            sampler = asyncio.create_task(
                record_own_resources(app.state.store, settings.service_name, settings.sample_interval)
            )
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            if own_store:
                await asyncio.to_thread(app.state.store.close)
                app.state.store = None
            await app.state.aggregator.aclose()

    app = FastAPI(title="HemaFed metrics", version=VERSION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(lambda: app.state.store))
    app.state.registry = registry
    security.install(app, settings)
    app.state.aggregator = AggregatorProxy.from_settings(settings)

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RunExists)
    async def _exists(request: Request, exc: RunExists) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    # the store's routers: GET open (dashboard, CSV, on the loopback-published port), writes only from
    # enrolled services (tests/unit/test_security.py); /api/predict is the browser's upload (proxied)
    for module in (runs, rounds, resources):
        app.include_router(module.router, dependencies=[WritesAuthenticated])
    for module in (health, metrics, predict):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.mount("/static", pages.static_files(), name="static")
    return app
