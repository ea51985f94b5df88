"""FastAPI app of one hospital's training agent: ``uvicorn hemafed_hospital.app:create_app --factory``."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hemafed.logs import setup_logging
from hemafed.web import BodySizeLimitMiddleware
from hemafed_hospital.agent import AgentError, HospitalAgent
from hemafed_hospital.routes import dataset, evaluate, fit, health
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
        reporter = None
        if report_resources and settings.metrics_url:
            from hemafed.resources import ResourceReporter

            reporter = ResourceReporter(settings.hospital_id, settings.metrics_url,
                                        interval=settings.sample_interval)
            await reporter.start()
        try:
            yield
        finally:
            if reporter is not None:
                await reporter.stop()

    app = FastAPI(title=f"HemaFed hospital {settings.hospital_id}", lifespan=lifespan)
    app.state.settings = settings
    app.state.agent = agent
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(AgentError)
    async def agent_error(_: Request, exc: AgentError) -> JSONResponse:
        log.warning("refused: %s", exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    for r in (health, dataset, fit, evaluate):
        app.include_router(r.router)
    return app
