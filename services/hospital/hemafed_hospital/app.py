"""FastAPI app of one hospital's training agent; served by ``python -m hemafed_hospital`` (TLS, see
:mod:`hemafed.security`)."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hemafed import security
from hemafed.logs import setup_logging
from hemafed.web import BodySizeLimitMiddleware
from hemafed_hospital.agent import AgentError, HospitalAgent
from hemafed_hospital.deps import Authenticated
from hemafed_hospital.routes import dataset, evaluate, fit, health, local_baseline
from hemafed_hospital.settings import HospitalSettings

log = logging.getLogger("hemafed.hospital")


def create_app(settings: HospitalSettings | None = None, agent: HospitalAgent | None = None,
               report_resources: bool = True) -> FastAPI:
    settings = settings or HospitalSettings()
    agent = agent or HospitalAgent(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_logging(settings.hospital_id)
        from hemafed.training import configure_threads

        configure_threads(settings.tf_threads)
        reporter = http = None
        if report_resources and settings.metrics_url:
            from hemafed.resources import ResourceReporter

            http = security.async_client(settings, {"metrics": settings.metrics_url}, timeout=5.0)
            reporter = ResourceReporter(settings.hospital_id, settings.metrics_url,
                                        interval=settings.sample_interval, client=http)
            await reporter.start()
        try:
            yield
        finally:
            if reporter is not None:
                await reporter.stop()
            if http is not None:
                await http.aclose()

    app = FastAPI(title=f"HemaFed hospital {settings.hospital_id}", lifespan=lifespan)
    app.state.settings = settings
    app.state.agent = agent
    security.install(app, settings)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(AgentError)
    async def agent_error(_: Request, exc: AgentError) -> JSONResponse:
        log.warning("refused: %s", exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    app.include_router(health.router)
    # everything but /health: only the enrolled aggregator (tests/unit/test_security.py checks every route)
    for r in (dataset, fit, evaluate, local_baseline):
        app.include_router(r.router, dependencies=[Authenticated])
    return app
