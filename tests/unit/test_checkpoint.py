"""Checkpoint / resume of the aggregator (RELIABILITY.md): the real round loop, strategies,
checkpoint files and metrics service (in-memory store, ASGI), deterministic numpy hospitals."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest

from hemafed_aggregator import checkpoint
from hemafed_metrics.store import InMemoryStore
from tests.unit.fakes import FakeHospital, make_server, patch_modelops

pytestmark = pytest.mark.anyio
IDS = ["hospital-1", "hospital-2", "hospital-3"]
STRATEGIES = [
    ("fedadam", {"server_lr": 0.1}),
    ("fedavgm", {}),
    ("feddyn", {"alpha": 0.1}),
    ("dp_fedavg", {"noise_multiplier": 0.5, "clip_norm": 5.0, "noise_seed": 7}),
    ("dp_fedavg", {"noise_multiplier": 0.5, "clip_norm": 5.0, "noise_seed": 7, "server_momentum": 0.9}),
    ("dp_fedavg", {"noise_multiplier": 2.0, "clip_norm": 0.05, "noise_seed": 7, "target_unclipped_quantile": 0.5,
                   "clipped_count_stddev": 2.0}),
    ("fedavg", {}),
]


@pytest.fixture(autouse=True)
def _no_tensorflow(monkeypatch):
    patch_modelops(monkeypatch)


def _hospitals(**kw):
    return [FakeHospital(h, n=10 + 5 * i, **(kw.get(h, {}))) for i, h in enumerate(IDS)]


def _rounds_without_timing(rounds):
    """Round entries without the measured times (the only fields a rerun may change)."""
    out = []
    for r in rounds:
        r = {k: v for k, v in r.items() if k != "duration_seconds"}
        r["hospitals"] = {h: {k: v for k, v in m.items() if k != "fit_seconds"} for h, m in r["hospitals"].items()}
        out.append(r)
    return out


async def _interrupted_then_resumed(tmp_path, strategy, params, *, stop_in_round: int, **run):
    """Run until the fit of ``stop_in_round`` starts, cancel the loop (a crash), start a new server."""
    store = InMemoryStore()
    hs = _hospitals(**{"hospital-2": {"hang_in_round": stop_in_round}})
    first = make_server(tmp_path, hs, store=store, strategy=strategy, strategy_params=params, **run)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(hs[1].hanging.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    ck = checkpoint.load(tmp_path / "results" / "ck")
    assert ck is not None and ck.round == stop_in_round - 1
    second = make_server(tmp_path, _hospitals(), store=store, strategy=strategy, strategy_params=params, **run)
    state = await second.run()
    return second, state, store


@pytest.mark.parametrize(("strategy", "params"), STRATEGIES, ids=[s + ("-momentum" if "server_momentum" in p else "-adaptive" if "target_unclipped_quantile" in p else "")
                              for s, p in STRATEGIES])
async def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, strategy, params):
    clean = make_server(tmp_path / "clean", _hospitals(), strategy=strategy, strategy_params=params)
    clean_state = await clean.run()
    assert clean_state.status == "finished", clean_state.message

    resumed, state, store = await _interrupted_then_resumed(tmp_path / "crash", strategy, params, stop_in_round=3)
    assert state.status == "finished", state.message
    assert state.resumed_from == [2]
    assert len(resumed.weights) == len(clean.weights)
    for a, b in zip(resumed.weights, clean.weights):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bit for bit: weights, strategy state, RNG
    assert state.best_round == clean_state.best_round
    assert state.best_val_accuracy == clean_state.best_val_accuracy
    for a, b in zip(resumed.best_weights, clean.best_weights):
        assert np.array_equal(a, b)
    assert _rounds_without_timing(state.rounds) == _rounds_without_timing(clean_state.rounds)
    # the metrics series: every round once, in order, the same values as the clean run
    rounds = store.list_rounds("ck")
    assert [r.round for r in rounds] == [1, 2, 3, 4, 5]
    got = [r.model_dump(mode="json", by_alias=True, exclude={"run_id", "recorded_at"}) for r in rounds]
    assert _rounds_without_timing(got) == _rounds_without_timing(clean_state.rounds)
    run = store.get_run("ck")
    assert run.status.value == "finished" and run.rounds_completed == 5
    run_json = json.loads((tmp_path / "crash" / "results" / "ck" / "run.json").read_text())
    assert run_json["resumed_from"] == [2] and run_json["rounds_completed"] == 5


async def test_a_run_resumed_inside_the_weight_averaging_window_ends_with_the_same_average(tmp_path):
    """SWA_ROUNDS=4 over FedAvgM (window: rounds 2..5), crashed in round 3: the checkpoint of round 2
    holds the sum of one model, and the resumed run's round-5 model (the average) is the clean run's."""
    clean = make_server(tmp_path / "clean", _hospitals(), strategy="fedavgm", swa_rounds=4)
    clean_state = await clean.run()
    assert clean_state.status == "finished", clean_state.message
    reports = [r["report"].get("swa") for r in clean_state.rounds]
    assert reports == [None] + [{"window": [2, 5], "collected": k, "global_is_average": k == 4} for k in (1, 2, 3, 4)]
    resumed, state, _ = await _interrupted_then_resumed(tmp_path / "crash", "fedavgm", {}, stop_in_round=3,
                                                        swa_rounds=4)
    assert state.status == "finished", state.message
    assert state.resumed_from == [2]
    for a, b in zip(resumed.weights, clean.weights):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert _rounds_without_timing(state.rounds) == _rounds_without_timing(clean_state.rounds)
    # the final model is the mean of the FedAvgM models of rounds 2 to 5 (the final models of runs
    # of 2, 3, 4 and 5 rounds without averaging: inside the window the hospitals train from them)
    plain = []
    for rounds in (2, 3, 4, 5):
        server = make_server(tmp_path / f"plain-{rounds}", _hospitals(), strategy="fedavgm", rounds=rounds)
        assert (await server.run()).status == "finished"
        plain.append(server.weights)
    for k, w in enumerate(clean.weights):
        expected = sum(p[k].astype(np.float64) for p in plain) / 4
        np.testing.assert_allclose(w, expected.astype(w.dtype), rtol=1e-6)
        assert not np.allclose(w, plain[-1][k])
    # resumed with another window, the run fails and says why instead of averaging the wrong rounds
    other = await make_server(tmp_path / "crash", _hospitals(), strategy="fedavgm", swa_rounds=3).run()
    assert other.status == "failed"
    assert other.message == ("the checkpoint averaged rounds 2..5, this run averages rounds 3..5: resume with the "
                             "SWA_ROUNDS the run started with, or use a new RUN_ID")


async def test_the_server_rng_is_restored_so_client_selection_continues(tmp_path):
    """fraction_fit 0.5 of 3: two hospitals drawn per round with the server RNG; after a resume the
    same ones are drawn as in the uninterrupted run."""
    clean_hs = _hospitals()
    clean = make_server(tmp_path / "clean", clean_hs, strategy="fedavg")
    await clean.run()
    picked = {h.id: h.fits for h in clean_hs}
    assert sum(len(v) for v in picked.values()) == 10  # 2 per round, 5 rounds

    store = InMemoryStore()
    hs = _hospitals()
    first = make_server(tmp_path / "crash", hs, store=store, strategy="fedavg")
    for h in hs:  # hang whichever hospital is first asked for round 4
        h.hang_in_round = 4
    task = asyncio.create_task(first.run())
    done, _ = await asyncio.wait([asyncio.create_task(h.hanging.wait()) for h in hs], timeout=30,
                                 return_when=asyncio.FIRST_COMPLETED)
    assert done
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    hs2 = _hospitals()
    state = await make_server(tmp_path / "crash", hs2, store=store, strategy="fedavg").run()
    assert state.status == "finished" and state.resumed_from == [3]
    for h_first, h_second in zip(hs, hs2):
        before = [r for r in h_first.fits if r <= 3]
        assert before + h_second.fits == picked[h_first.id]


async def test_resuming_twice_records_both_and_a_finished_checkpoint_only_finishes(tmp_path):
    store = InMemoryStore()
    for stop in (2, 4):
        hs = _hospitals(**{"hospital-1": {"hang_in_round": stop}})
        server = make_server(tmp_path, hs, store=store)
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(hs[0].hanging.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    hs = _hospitals()
    state = await make_server(tmp_path, hs, store=store).run()
    assert state.status == "finished" and state.resumed_from == [1, 3]
    assert sorted(r for h in hs for r in h.fits) == [4, 4, 5, 5]  # only rounds 4 and 5 trained again
    # a restart after the end: nothing is trained again, the run finishes (final models re-saved)
    hs = _hospitals()
    state = await make_server(tmp_path, hs, store=store).run()
    assert state.status == "finished" and state.resumed_from == [1, 3, 5]
    assert [h.fits for h in hs] == [[], [], []]
    assert [r.round for r in store.list_rounds("ck")] == [1, 2, 3, 4, 5]


async def test_checkpoint_files_are_complete_and_no_temporary_is_left(tmp_path):
    state = await make_server(tmp_path, _hospitals(), rounds=2).run()
    assert state.status == "finished"
    d = tmp_path / "results" / "ck" / "checkpoint"
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint.json", "round-0002.safetensors"]
    index = json.loads((d / "checkpoint.json").read_text())
    assert index["round"] == 2 and index["num_weights"] == 3 and index["has_best"] is True
    assert index["strategy"]["name"] == "fedadam"
    assert index["strategy"]["tensor_keys"] == ["m", "v"] and index["strategy"]["state"] == {"step": 2}
    assert index["rng_state"]["bit_generator"] == "PCG64"
    assert [r["round"] for r in index["rounds"]] == [1, 2]
    assert set(index["hospitals"]) == set(IDS)
    assert index["spec"] == [[[4, 3], "float32"], [[3], "float32"], [[2, 2], "float32"]]
    ck = checkpoint.load(tmp_path / "results" / "ck")
    assert ck.round == 2 and len(ck.strategy_state["m"]) == 3 and ck.strategy_state["step"] == 2
    assert all(x.dtype == np.float64 for x in ck.strategy_state["v"])


async def test_an_altered_checkpoint_fails_the_run_clearly(tmp_path):
    await make_server(tmp_path, _hospitals(), rounds=2).run()
    blob = tmp_path / "results" / "ck" / "checkpoint" / "round-0002.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    state = await make_server(tmp_path, _hospitals(), rounds=3).run()
    assert state.status == "failed"
    assert "cannot resume run ck" in state.message and "SHA-256" in state.message


async def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    await make_server(tmp_path, _hospitals(), rounds=2, strategy="fedadam").run()
    state = await make_server(tmp_path, _hospitals(), rounds=3, strategy="fedavg").run()
    assert state.status == "failed"
    assert "another configuration" in state.message and "'fedadam'" in state.message


async def test_a_checkpoint_resumes_only_under_the_best_by_it_was_picked_by(tmp_path):
    await make_server(tmp_path, _hospitals(), rounds=2, best_by="pooled").run()
    index = json.loads((tmp_path / "results" / "ck" / "checkpoint" / "checkpoint.json").read_text())
    assert index["best_by"] == "pooled"
    state = await make_server(tmp_path, _hospitals(), rounds=3).run()
    assert state.status == "failed"
    assert state.message == (f"{tmp_path / 'results' / 'ck' / 'checkpoint'} picked its best round by BEST_BY=pooled, "
                             "this run by BEST_BY=median; resume with BEST_BY=pooled or use a new RUN_ID")
    state = await make_server(tmp_path, _hospitals(), rounds=3, best_by="pooled").run()
    assert state.status == "finished" and state.resumed_from == [2] and len(state.rounds) == 3
    # a checkpoint written before BEST_BY existed was picked by the median
    index = json.loads((tmp_path / "results" / "ck" / "checkpoint" / "checkpoint.json").read_text())
    assert index["round"] == 3 and index["best_by"] == "pooled"
    del index["best_by"]
    (tmp_path / "results" / "ck" / "checkpoint" / "checkpoint.json").write_text(json.dumps(index))
    assert checkpoint.load(tmp_path / "results" / "ck").best_by == "median"


def test_state_split_and_join_round_trip():
    rng = np.random.default_rng(5)
    rng.standard_normal(3)
    state = {"m": [np.ones((2, 2)), np.zeros(3)], "step": 4, "rng": rng.bit_generator.state,
             "known_ids": ["a", "b"], "h": None, "single": np.arange(3.0)}
    tensors, rest = checkpoint.split_state(state)
    assert sorted(tensors) == ["m", "single"]
    back = checkpoint.join_state(tensors, json.loads(json.dumps(rest)))
    assert back["step"] == 4 and back["known_ids"] == ["a", "b"] and back["h"] is None
    assert np.array_equal(back["single"], np.arange(3.0))
    restored = checkpoint.restore_rng(back["rng"])
    assert np.array_equal(restored.standard_normal(4), rng.standard_normal(4))
    with pytest.raises(TypeError, match="neither arrays nor JSON"):
        checkpoint.split_state({"bad": object()})


def test_no_checkpoint_reads_as_none_and_garbage_as_an_error(tmp_path):
    assert checkpoint.load(tmp_path) is None
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "checkpoint.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable checkpoint"):
        checkpoint.load(tmp_path)


async def test_departed_hospitals_last_updates_survive_a_resume(tmp_path):
    """DEPARTED=keep re-uses a departed hospital's last update: that memory is in the checkpoint too."""
    run = {"participation": "schedule:hospital-3=3-5", "departed": "keep", "fraction_fit": 1.0}
    clean = make_server(tmp_path / "clean", _hospitals(), strategy="fedavg", **run)
    assert (await clean.run()).status == "finished"
    store = InMemoryStore()
    hs = _hospitals(**{"hospital-1": {"hang_in_round": 4}})
    first = make_server(tmp_path / "crash", hs, store=store, strategy="fedavg", **run)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(hs[0].hanging.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    ck = checkpoint.load(tmp_path / "crash" / "results" / "ck")
    assert ck.round == 3 and sorted(ck.last_updates) == IDS and ck.last_updates["hospital-3"][0] == 20
    second = make_server(tmp_path / "crash", _hospitals(), store=store, strategy="fedavg", **run)
    state = await second.run()
    assert state.status == "finished" and state.resumed_from == [3]
    for a, b in zip(second.weights, clean.weights):
        assert np.array_equal(a, b)
