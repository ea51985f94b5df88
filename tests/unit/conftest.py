"""Shared fixtures of the unit tests."""

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run ``pytest.mark.anyio`` tests on asyncio only."""
    return "asyncio"


def _settings_variables() -> set[str]:
    """Every environment variable a service's Settings class reads (fields, upper-cased)."""
    from hemafed_aggregator.settings import AggregatorSettings, RunConfig
    from hemafed_hospital.central import CentralSettings
    from hemafed_hospital.settings import HospitalSettings
    from hemafed_metrics.settings import MetricsSettings

    classes = (AggregatorSettings, RunConfig, HospitalSettings, MetricsSettings, CentralSettings)
    return {name.upper() for cls in classes for name in cls.model_fields}


@pytest.fixture(autouse=True, scope="session")
def _no_run_variables_from_the_caller():
    """`make test` exports the Makefile's run options (ROUNDS, ATTACKER, ...): the in-process tier
    builds its settings explicitly and must not pick them up from the environment."""
    saved = {k: os.environ.pop(k) for k in _settings_variables() & set(os.environ)}
    yield
    os.environ.update(saved)
