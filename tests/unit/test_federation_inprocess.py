"""A whole federation in one process: the real aggregator round loop, three real hospital
agents and the real metrics service, wired through ASGI transports (no Docker, no sockets)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import httpx

from hemafed.exchange import ModelExchange
from hemafed_aggregator.app import build_server
from hemafed_aggregator.settings import AggregatorSettings, RunConfig
from hemafed_hospital.agent import HospitalAgent
from hemafed_hospital.app import create_app as hospital_app
from hemafed_hospital.settings import HospitalSettings
from hemafed_metrics.app import create_app as metrics_app
from hemafed_metrics.store import InMemoryStore
from tests.unit.helpers import RoutingTransport, synthetic_folder

pytestmark = pytest.mark.anyio
HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]


class NaNAgent(HospitalAgent):
    """A broken site: answers every fit with NaN weights."""

    def fit(self, body: bytes) -> bytes:
        msg = ModelExchange.from_bytes(super().fit(body))
        msg.weights[0][...] = np.nan
        return msg.to_bytes()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fed")
    out = {h: synthetic_folder(root / h, n_per_class=6, size=32, seed=i) for i, h in enumerate(HOSPITALS)}
    out["test"] = synthetic_folder(root / "test", n_per_class=3, size=32, seed=99)
    return out


def _federation(folders, tmp_path, *, agents=None, hospitals=HOSPITALS, **run):
    store = InMemoryStore()
    apps = {"metrics": metrics_app(store=store)}
    for h in HOSPITALS:
        settings = HospitalSettings(hospital_id=h, data_dir=folders[h])
        agent = (agents or {}).get(h, HospitalAgent)(settings)
        apps[h] = hospital_app(settings, agent=agent, report_resources=False)
    http = httpx.AsyncClient(transport=RoutingTransport(apps))
    settings = AggregatorSettings(hospitals={h: f"http://{h}" for h in hospitals}, metrics_url="http://metrics",
                                  output_dir=tmp_path / "results", test_dir=folders["test"])
    cfg = RunConfig(**{"run_id": "inproc", "rounds": 2, "image_size": 32, "local_epochs": 1, "batch_size": 16,
                       "wait_for_clients": 2, "round_timeout": 120, "split": "iid", "dataset": "synthetic", **run})
    return build_server(settings, cfg, http), store


async def test_two_rounds_of_fedavg_end_to_end(folders, tmp_path):
    server, store = _federation(folders, tmp_path)
    state = await server.run()
    assert state.status == "finished", state.message
    assert len(state.rounds) == 2
    assert state.best_round in (1, 2)
    assert state.classes == sorted(state.classes) and len(state.classes) == 8
    run = store.get_run("inproc")
    assert run.status.value == "finished"
    assert run.rounds_completed == 2 and run.clients == 3 and run.split == "iid" and run.model == "cnn"
    assert run.test_accuracy == state.test_results["accuracy"]
    assert run.test_results["num_examples"] == 24
    rounds = store.list_rounds("inproc")
    for r in rounds:
        assert set(r.hospitals) == set(HOSPITALS)
        assert all(m.status == "ok" and m.num_examples > 0 and m.update_bytes > 100_000 for m in r.hospitals.values())
        vals = [m.val_accuracy for m in r.hospitals.values()]
        assert r.global_.val_accuracy_median == pytest.approx(float(np.median(vals)))
    out = tmp_path / "results" / "inproc"
    assert {p.name for p in out.iterdir()} >= {"best.keras", "final.keras", "best.json", "final.json",
                                               "best.safetensors", "run.json", "test_results.json",
                                               "saved_model", "model_card.json", "model_card.md"}
    card = json.loads((out / "model_card.json").read_text())  # written by _finish (hemafed_aggregator.modelcard)
    assert card["run_id"] == "inproc" and card["classes"] == state.classes and card["image_size"] == 32
    assert card["selection"]["best_round"] == state.best_round
    assert card["files"]["saved_model"]["endpoint"] == "serve"
    assert card["evaluation"]["test"]["accuracy"] == state.test_results["accuracy"]
    assert {h: d["num_train"] for h, d in card["training"]["data"]["hospitals"].items()} == {
        h: state.hospitals[h].num_train for h in HOSPITALS}


async def test_a_nan_update_is_left_out_and_the_run_goes_on(folders, tmp_path):
    server, store = _federation(folders, tmp_path, agents={"hospital-2": NaNAgent}, rounds=1)
    state = await server.run()
    assert state.status == "finished", state.message
    r = store.list_rounds("inproc")[0]
    assert r.hospitals["hospital-2"].status == "rejected"
    assert "NaN" in r.hospitals["hospital-2"].message
    assert r.hospitals["hospital-1"].status == "ok" and r.hospitals["hospital-3"].status == "ok"
    assert state.hospitals["hospital-2"].status == "rejected"


async def test_an_unreachable_hospital_is_left_out(folders, tmp_path):
    server, store = _federation(folders, tmp_path, hospitals=[*HOSPITALS, "hospital-4"], rounds=1,
                                min_clients=2)
    state = await server.run()
    assert state.status == "finished", state.message
    assert state.hospitals["hospital-4"].status in ("unreachable", "error")
    r = store.list_rounds("inproc")[0]
    assert r.hospitals["hospital-4"].status == "error"
    assert "no route" in r.hospitals["hospital-4"].message


async def test_too_few_hospitals_fails_cleanly(folders, tmp_path):
    server, store = _federation(folders, tmp_path, hospitals=["hospital-1", "hospital-8", "hospital-9"],
                                rounds=1, min_clients=2)
    state = await server.run()
    assert state.status == "failed"
    assert "only 1 of 3 hospitals became healthy" in state.message


async def test_weekly_schedule_trains_each_round_on_its_part_only(folders, tmp_path):
    server, store = _federation(folders, tmp_path, rounds=2, schedule="weekly")
    state = await server.run()
    assert state.status == "finished", state.message
    rounds = store.list_rounds("inproc")
    # 48 images a hospital, 0.2 held out for validation: ~38 train images, cut into 2 weeks
    for h in HOSPITALS:
        per_round = [r.hospitals[h].num_examples for r in rounds]
        total = state.hospitals[h].num_train
        assert sum(per_round) == total and all(abs(n - total / 2) <= 1 for n in per_round), (per_round, total)


async def test_weekly_recycle_carries_images_into_the_next_round(folders, tmp_path):
    server, store = _federation(folders, tmp_path, rounds=2, schedule="weekly-recycle", recycle_fraction=0.5)
    state = await server.run()
    assert state.status == "finished", state.message
    rounds = store.list_rounds("inproc")
    for h in HOSPITALS:
        n1, n2 = (r.hospitals[h].num_examples for r in rounds)
        assert n2 == state.hospitals[h].num_train - n1 + round(0.5 * n1)


@pytest.mark.parametrize("departed", ["drop", "keep"])
async def test_a_departed_hospital_is_absent_and_its_update_dropped_or_kept(folders, tmp_path, departed):
    server, store = _federation(folders, tmp_path, rounds=3, participation="schedule:hospital-3=2-3",
                                departed=departed)
    seen: list[list[str]] = []
    aggregate = server.strategy.aggregate_train

    def spy(rnd, weights, results, failures):
        seen.append(sorted(r.hospital_id for r in results))
        return aggregate(rnd, weights, results, failures)

    server.strategy.aggregate_train = spy
    state = await server.run()
    assert state.status == "finished", state.message
    rounds = store.list_rounds("inproc")
    assert rounds[0].hospitals["hospital-3"].status == "ok"
    for r in rounds[1:]:
        assert r.hospitals["hospital-3"].status == "absent"
        assert r.hospitals["hospital-3"].val_accuracy is None  # not evaluated while away
        assert r.report["participation"] == {
            "present": ["hospital-1", "hospital-2"], "absent": ["hospital-3"],
            "stale": ["hospital-3"] if departed == "keep" else [], "departed": departed}
    assert "participation" not in rounds[0].report or rounds[0].report["participation"]["absent"] == []
    if departed == "keep":  # approach 2: round 1's update of hospital-3 is used again in rounds 2 and 3
        assert seen == [HOSPITALS, HOSPITALS, HOSPITALS]
    else:  # approach 1: dropped
        assert seen == [HOSPITALS, HOSPITALS[:2], HOSPITALS[:2]]


async def test_the_final_model_is_scored_beside_an_earlier_best_round(folders, tmp_path, monkeypatch):
    """Global validation made to prefer round 1: the report scores round 2's model beside it,
    exactly as the test evaluation scores any weights, and never picks by it."""
    from hemafed_aggregator import modelops
    from hemafed_aggregator.strategies.base import Strategy

    medians = {1: 0.9, 2: 0.1}
    original = Strategy.aggregate_evaluate

    def rigged(self, rnd, results):
        return {**original(self, rnd, results), "val_accuracy_median": medians[rnd]}

    monkeypatch.setattr(Strategy, "aggregate_evaluate", rigged)
    server, _ = _federation(folders, tmp_path)
    state = await server.run()
    assert state.status == "finished", state.message
    assert state.best_round == 1 and state.test_results["best_round"] == 1
    final = state.test_results["final_model"]
    expected = modelops.evaluate_on_test(server.task, server.weights, folders["test"])
    assert final == {"round": 2, "loss": pytest.approx(expected["loss"]), "accuracy": expected["accuracy"],
                     "macro_f1": pytest.approx(expected["macro_f1"]),
                     "recall": {c: pytest.approx(v["recall"]) for c, v in expected["per_class"].items()}}
    saved = json.loads((tmp_path / "results" / "inproc" / "test_results.json").read_text())
    assert saved["final_model"]["round"] == 2 and saved["final_model"]["accuracy"] == expected["accuracy"]
    assert saved["best_round"] == 1 and saved["accuracy"] == state.test_results["accuracy"]

    medians.update({1: 0.1, 2: 0.9})  # the last round is the best: nothing to add
    server, _ = _federation(folders, tmp_path / "again")
    state = await server.run()
    assert state.best_round == 2 and state.test_results["final_model"] is None


@pytest.mark.parametrize("best_by, best", [("median", 1), ("pooled", 2)])
async def test_best_by_picks_the_round_by_the_median_or_the_pooled_validation_accuracy(
        folders, tmp_path, monkeypatch, best_by, best):
    """Global validation rigged so that the median prefers round 1 and the pooled accuracy round 2:
    BEST_BY decides which round is tested, and best.json, best.safetensors and the model card say
    by what and with which figures."""
    from hemafed.exchange import ModelExchange
    from hemafed_aggregator.strategies.base import Strategy

    figures = {1: (0.9, 0.5), 2: (0.6, 0.8)}  # round: (median, pooled)
    original = Strategy.aggregate_evaluate

    def rigged(self, rnd, results):
        median, pooled = figures[rnd]
        return {**original(self, rnd, results), "val_accuracy_median": median, "val_accuracy_mean": pooled}

    monkeypatch.setattr(Strategy, "aggregate_evaluate", rigged)
    server, _ = _federation(folders, tmp_path, best_by=best_by)
    state = await server.run()
    assert state.status == "finished", state.message
    score = figures[best][0 if best_by == "median" else 1]
    assert state.best_round == best and state.best_val_accuracy == score
    assert state.test_results["best_round"] == best
    assert (state.test_results["final_model"] is None) == (best == 2)
    run_dir = tmp_path / "results" / "inproc"
    meta = json.loads((run_dir / "best.json").read_text())
    assert (meta["best_round"], meta["best_by"], meta["best_val_accuracy"], meta["best_val_accuracy_median"]) == (
        best, best_by, score, figures[best][0])
    saved = ModelExchange.from_bytes((run_dir / "best.safetensors").read_bytes())
    assert saved.round == best
    assert (saved.metrics["val_accuracy_median"], saved.metrics["val_accuracy_mean"]) == pytest.approx(figures[best])
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["selection"] == {
        "best_round": best, "best_by": best_by, "best_val_accuracy": score,
        "best_val_accuracy_median": figures[best][0],
        "rule": ("the round with the highest median of the hospitals' validation accuracies (never chosen on the "
                 "test set)") if best_by == "median" else
                ("the round with the highest pooled validation accuracy, all hospitals' validation images "
                 "together (never chosen on the test set)")}
