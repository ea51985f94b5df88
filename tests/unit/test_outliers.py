"""Per-round outlier flags (hemafed_aggregator.outliers): the rule on hand-made updates, and the
report the real round loop sends to the metrics service when one hospital attacks."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from hemafed_aggregator.outliers import flag, outlier_report
from hemafed_aggregator.strategies.base import FitRes
from hemafed_metrics.store import InMemoryStore
from tests.unit.fakes import FakeHospital, make_server, patch_modelops

G = [np.zeros((3,), np.float32), np.zeros((2, 2), np.float32)]


def _res(hid, u):
    return FitRes(hospital_id=hid, weights=[(g + x).astype(np.float32) for g, x in zip(G, u)], num_examples=5)


HONEST = {
    "hospital-1": [np.array([1.0, 1.0, 0.0]), np.array([[0.5, 0.0], [0.0, 0.5]])],
    "hospital-2": [np.array([1.2, 0.8, 0.1]), np.array([[0.4, 0.1], [0.0, 0.6]])],
    "hospital-3": [np.array([0.9, 1.1, -0.1]), np.array([[0.6, 0.0], [0.1, 0.4]])],
}


def test_honest_updates_are_not_flagged():
    rep = outlier_report(G, [_res(h, u) for h, u in HONEST.items()])
    assert set(rep) == set(HONEST)
    for h, r in rep.items():
        assert set(r) == {"norm", "norm_ratio", "cosine", "flagged", "why"}
        assert r["flagged"] is False and r["why"] == ""
        assert r["cosine"] > 0.9 and 0.8 < r["norm_ratio"] < 1.2
        assert r["norm"] == pytest.approx(float(np.sqrt(sum(np.sum(np.square(x)) for x in HONEST[h]))), rel=1e-6)


@pytest.mark.parametrize("attack", ["sign_flip", "scale", "noise"])
def test_an_attacker_among_honest_hospitals_is_flagged(attack):
    rng = np.random.default_rng(0)
    updates = dict(HONEST)
    u = HONEST["hospital-3"]
    updates["hospital-4"] = {
        "sign_flip": [-10 * x for x in u], "scale": [10 * x for x in u],
        "noise": [rng.normal(0, 10.0, x.shape) for x in u],
    }[attack]
    rep = outlier_report(G, [_res(h, x) for h, x in updates.items()])
    assert [h for h, r in rep.items() if r["flagged"]] == ["hospital-4"]
    why = rep["hospital-4"]["why"]
    if attack == "sign_flip":
        assert rep["hospital-4"]["cosine"] < -0.9 and "cosine to consensus" in why and "norm" in why
    elif attack == "scale":
        assert rep["hospital-4"]["cosine"] > 0.9 and why.startswith("norm ") and "x the median (limit 3x)" in why
    else:
        assert rep["hospital-4"]["norm_ratio"] > 3


def test_flag_thresholds_and_degenerate_cases():
    scores = {"a": {"norm": 1.0, "cosine_to_consensus": 0.5}, "b": {"norm": 2.5, "cosine_to_consensus": -0.1},
              "c": {"norm": 1.0, "cosine_to_consensus": 0.9}}
    rep = flag(scores, norm_factor=2.0, min_cosine=0.0)
    assert rep["b"]["flagged"] and rep["b"]["why"] == "norm 2.5x the median (limit 2x); cosine to consensus -0.10 < 0"
    assert not rep["a"]["flagged"] and not rep["c"]["flagged"]
    assert not flag(scores, norm_factor=3.0, min_cosine=-0.5)["b"]["flagged"]
    zeros = flag({"a": {"norm": 0.0, "cosine_to_consensus": 0.0}, "b": {"norm": 0.0, "cosine_to_consensus": 0.0}})
    assert zeros["a"]["norm_ratio"] == 1.0 and not zeros["a"]["flagged"]
    assert outlier_report(G, []) == {} and flag({}) == {}


@pytest.mark.anyio
@pytest.mark.parametrize("attack", ["sign_flip", "scale"])
async def test_the_round_loop_reports_the_flags_to_the_metrics_service(tmp_path, monkeypatch, attack):
    patch_modelops(monkeypatch)
    store = InMemoryStore()
    hs = [FakeHospital("hospital-1"), FakeHospital("hospital-2"), FakeHospital("hospital-3", attack=attack),
          FakeHospital("hospital-4")]
    state = await make_server(tmp_path, hs, store=store, strategy="median", fraction_fit=1.0, rounds=2).run()
    assert state.status == "finished", state.message
    for r in store.list_rounds("ck"):
        out = r.report["outliers"]
        assert set(out) == {"hospital-1", "hospital-2", "hospital-3", "hospital-4"}
        assert [h for h, o in out.items() if o["flagged"]] == ["hospital-3"], out
        assert out["hospital-3"]["norm_ratio"] > 3
        assert all(isinstance(o["norm"], float) and -1 <= o["cosine"] <= 1 for o in out.values())


@pytest.mark.anyio
async def test_the_outlier_report_and_aggregation_leave_the_event_loop_free(tmp_path, monkeypatch):
    """Both are numpy work of seconds for many hospitals or a large model: the round loop runs them in
    a worker thread, so the event loop (the aggregator's /health and /api/status) answers meanwhile."""
    import hemafed_aggregator.server as server_module

    patch_modelops(monkeypatch)
    calls: list[dict] = []
    ticks = 0

    def slow_report(*args, **kw):
        before = ticks
        time.sleep(0.3)  # blocking, as the real numpy work is
        calls.append({"main_thread": threading.current_thread() is threading.main_thread(),
                      "ticks": ticks - before})
        return outlier_report(*args, **kw)

    monkeypatch.setattr(server_module, "outlier_report", slow_report)

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    store = InMemoryStore()
    hs = [FakeHospital("hospital-1"), FakeHospital("hospital-2"), FakeHospital("hospital-3", attack="scale"),
          FakeHospital("hospital-4")]
    try:
        state = await make_server(tmp_path, hs, store=store, strategy="median", fraction_fit=1.0, rounds=2).run()
    finally:
        tick.cancel()
    assert state.status == "finished", state.message
    assert len(calls) == 2 and not any(c["main_thread"] for c in calls)
    assert all(c["ticks"] >= 5 for c in calls), calls  # ~30 ticks of 10 ms fit in 0.3 s; blocked: 0
    # the report still reaches the metrics service, flags and all
    assert [[h for h, o in r.report["outliers"].items() if o["flagged"]] for r in store.list_rounds("ck")] == [
        ["hospital-3"], ["hospital-3"]]
