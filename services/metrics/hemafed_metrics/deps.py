"""Shared FastAPI dependencies, as named ``Annotated`` aliases for route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from hemafed.security import refuse_foreign_subject, require_caller, require_caller_for_writes

from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import MetricsStore
from hemafed_metrics.upstream import AggregatorProxy


def get_store(request: Request) -> MetricsStore:
    """The app's store (injected into ``create_app`` or opened by its lifespan)."""
    store: MetricsStore | None = getattr(request.app.state, "store", None)
    if store is None:
        raise RuntimeError("metrics store is not open (lifespan not run and none injected)")
    return store


def get_settings(request: Request) -> MetricsSettings:
    settings: MetricsSettings = request.app.state.settings
    return settings


def get_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.registry
    return registry


def get_aggregator(request: Request) -> AggregatorProxy:
    """The proxy to the aggregator (its HTTP client is built once, in hemafed_metrics.upstream)."""
    proxy: AggregatorProxy = request.app.state.aggregator
    return proxy


StoreDep = Annotated[MetricsStore, Depends(get_store)]
SettingsDep = Annotated[MetricsSettings, Depends(get_settings)]
RegistryDep = Annotated[CollectorRegistry, Depends(get_registry)]
AggregatorDep = Annotated[AggregatorProxy, Depends(get_aggregator)]
#: an enrolled service (aggregator, central, hospital-k): 401 / 403 otherwise
CallerDep = Annotated[str, Depends(require_caller)]
#: for the store's routers: reads stay open to the dashboard, writes need an enrolled caller
WritesAuthenticated = Depends(require_caller_for_writes)


def check_own_samples(request: Request, services: set[str]) -> None:
    """A caller authenticated by the router (``request.state.caller``) may report resource samples
    of its own service only; an app without enrolment (in process, no secrets) accepts any."""
    caller: str | None = getattr(request.state, "caller", None)
    foreign = sorted(services - {caller}) if caller is not None else []
    if foreign:
        refuse_foreign_subject(request, caller, foreign)
