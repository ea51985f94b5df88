"""Aggregator configuration from the environment (what compose passes)."""

import pytest
from pydantic import ValidationError

from hemafed_aggregator.app import fit_config_of
from hemafed_aggregator.settings import AggregatorSettings, RunConfig


def test_hospitals_and_run_config_from_env(monkeypatch):
    monkeypatch.setenv("HOSPITALS", "hospital-1=http://hospital-1:8000, hospital-2=http://hospital-2:8000/,")
    monkeypatch.setenv("STRATEGY_PARAMS", '{"server_lr": 0.5}')
    monkeypatch.setenv("CLASSES", "neutrophil, lymphocyte")
    monkeypatch.setenv("ROUNDS", "7")
    monkeypatch.setenv("LEARNING_RATE", "0.01")
    s, r = AggregatorSettings(), RunConfig()
    assert s.hospitals == {"hospital-1": "http://hospital-1:8000", "hospital-2": "http://hospital-2:8000"}
    assert r.strategy_params == {"server_lr": 0.5}
    assert r.classes == ["neutrophil", "lymphocyte"]
    assert r.rounds == 7
    fc = fit_config_of(r)
    assert fc.learning_rate == 0.01 and fc.local_epochs == r.local_epochs and fc.batch_size == r.batch_size


@pytest.mark.parametrize("var, value, message", [
    ("HOSPITALS", "hospital-1", "must be id=url"),
    ("STRATEGY_PARAMS", "[1, 2]", "JSON object"),
    ("RUN_ID", "../etc", "String should match pattern"),
    ("ROUNDS", "0", "greater than or equal to 1"),
])
def test_bad_values_are_refused_with_a_reason(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=message):
        AggregatorSettings() if var == "HOSPITALS" else RunConfig()
