"""FastAPI app of the aggregator, served by ``python -m hemafed_aggregator`` (TLS: :mod:`hemafed.security`).

On start-up it builds the strategy, the hospital clients and the round loop, and (with
AUTO_START) runs the federation in the background while the API reports its progress."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from fastapi import FastAPI

from hemafed import security
from hemafed.logs import setup_logging
from hemafed.reporting import MetricsReporter
from hemafed.schemas import FitConfig
from hemafed.web import BodySizeLimitMiddleware
from hemafed_aggregator.clients import HttpHospitalClient
from hemafed_aggregator.deps import Authenticated
from hemafed_aggregator.inference import Predictor
from hemafed_aggregator.routes import health, predict, rounds, status
from hemafed_aggregator.server import FederatedServer
from hemafed_aggregator.settings import AggregatorSettings, RunConfig
from hemafed_aggregator.strategies import ClassifierRetraining, ServerSWA, Strategy, build_strategy

log = logging.getLogger("hemafed.aggregator")


def fit_config_of(run: RunConfig) -> FitConfig:
    return FitConfig(local_epochs=run.local_epochs, batch_size=run.batch_size, learning_rate=run.learning_rate,
                     optimizer=run.optimizer, augment=run.augment, class_weighting=run.class_weighting,
                     dp_clip_norm=run.dp_clip_norm, dp_noise_multiplier=run.dp_noise_multiplier,
                     dp_delta=run.dp_delta, max_steps_per_epoch=run.max_steps_per_epoch,
                     schedule=run.schedule, schedule_parts=run.rounds, recycle_fraction=run.recycle_fraction,
                     frozen_classifier=run.freeze_classifier)


def strategy_of(run: RunConfig) -> Strategy:
    """The run's strategy with its parameters; wrapped for server-side weight averaging over the
    SWA_ROUNDS before the classifier rounds, and for the last CLASSIFIER_ROUNDS rounds."""
    strategy = build_strategy(run.strategy, fit_config=fit_config_of(run), fraction_fit=run.fraction_fit,
                              min_fit_clients=run.min_clients, lr_schedule=run.lr_schedule,
                              lr_min_fraction=run.lr_min_fraction, total_rounds=run.rounds, **run.strategy_params)
    if run.swa_rounds:
        strategy = ServerSWA(strategy, rounds=run.swa_rounds, last_round=run.rounds - run.classifier_rounds)
    if run.classifier_rounds:
        strategy = ClassifierRetraining(strategy, rounds=run.classifier_rounds,
                                        learning_rate=run.classifier_learning_rate or None,
                                        local_epochs=run.classifier_epochs or None,
                                        optimizer=run.classifier_optimizer or None,
                                        augment=run.classifier_augment, trained_start=bool(run.init_run))
    return strategy


def build_server(settings: AggregatorSettings, run: RunConfig, http: httpx.AsyncClient) -> FederatedServer:
    if not settings.hospitals:
        raise ValueError("HOSPITALS is empty: name at least one hospital as id=url")
    if run.departed == "keep" and run.strategy == "scaffold":
        raise ValueError("DEPARTED=keep re-uses a departed hospital's last weights; SCAFFOLD's control-variate "
                         "deltas cannot be re-used: choose DEPARTED=drop")
    strategy = strategy_of(run)
    clients = [HttpHospitalClient(hid, url, http, run_id=run.run_id) for hid, url in settings.hospitals.items()]
    return FederatedServer(run=run, strategy=strategy, clients=clients,
                           reporter=MetricsReporter(settings.metrics_url, http),
                           output_dir=settings.output_dir, test_dir=settings.test_dir)


def create_app(settings: AggregatorSettings | None = None, run: RunConfig | None = None,
               http: httpx.AsyncClient | None = None, report_resources: bool = True) -> FastAPI:
    settings = settings or AggregatorSettings()
    run = run or RunConfig()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_logging("aggregator")
        from hemafed.training import configure_threads

        configure_threads(settings.tf_threads)
        # one client for every outgoing call: verifies each hospital's certificate (CA + host name), presents
        # ours and the per-hospital credential (hemafed.security)
        client = http or security.async_client(settings, {**settings.hospitals, "metrics": settings.metrics_url})
        app.state.server = build_server(settings, run, client)
        reporter = None
        if report_resources and settings.metrics_url:
            from hemafed.resources import ResourceReporter

            reporter = ResourceReporter("aggregator", settings.metrics_url, interval=settings.sample_interval,
                                        client=client)
            await reporter.start()
        task = asyncio.create_task(app.state.server.run()) if settings.auto_start else None
        app.state.run_task = task
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if reporter is not None:
                await reporter.stop()
            if http is None:
                await client.aclose()

    app = FastAPI(title="HemaFed aggregator", lifespan=lifespan)
    security.install(app, settings)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.state.predictor = Predictor(max_bytes=settings.predict_max_bytes, max_pixels=settings.predict_max_pixels)
    # run status and rounds stay readable on the loopback-published port (make status, follow);
    # the model (POST /api/predict) answers only enrolled callers: the metrics service's proxy
    for r in (health, status, rounds):
        app.include_router(r.router)
    app.include_router(predict.router, dependencies=[Authenticated])
    return app
