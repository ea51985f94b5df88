"""The simulation engine (hemafed_aggregator.simulate): many real hospital apps in one process
behind the in-process transport, the real round loop; tiny synthetic data (16 px)."""

from __future__ import annotations

import asyncio
import csv
import json

import httpx
import numpy as np
import pytest

from hemafed_aggregator import simulate as sim
from hemafed_aggregator.inprocess import RoutingTransport
from hemafed_aggregator.settings import RunConfig
from tools import experiment as ex

SMALL = ["--synthetic-per-class", "8", "--synthetic-size", "16", "--min-per-hospital", "4", "--image-size", "16",
         "--local-epochs", "1", "--batch-size", "16"]


# --------------------------------------------------------------------------- the transport


class Probe:
    """A minimal ASGI app that counts requests in flight."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def __call__(self, scope, receive, send):
        assert scope["type"] == "http"
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["path"].encode()})


@pytest.mark.anyio
async def test_routing_transport_caps_concurrency_of_the_limited_hosts_only():
    a, b = Probe(), Probe()
    transport = RoutingTransport({"h1": a, "metrics": b}, max_concurrent=2, limited=["h1"])
    async with httpx.AsyncClient(transport=transport) as http:
        rs = await asyncio.gather(*(http.get(f"http://h1/fit/{i}") for i in range(8)),
                                  *(http.get(f"http://metrics/x/{i}") for i in range(5)))
    assert [r.status_code for r in rs] == [200] * 13
    assert [r.text for r in rs[:3]] == ["/fit/0", "/fit/1", "/fit/2"]
    assert a.peak == 2  # queued behind the cap
    assert b.peak == 5  # not limited


@pytest.mark.anyio
async def test_routing_transport_unknown_host_is_a_connect_error():
    async with httpx.AsyncClient(transport=RoutingTransport({"h1": Probe()})) as http:
        with pytest.raises(httpx.ConnectError, match="no route to hospital-9"):
            await http.get("http://hospital-9/health")
    with pytest.raises(ValueError, match="max_concurrent must be >= 1"):
        RoutingTransport({}, max_concurrent=0)


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data5(tmp_path_factory):
    work = tmp_path_factory.mktemp("simdata")
    opts = sim.DataOptions(clients=5, dataset="synthetic", split="iid", min_per_hospital=4,
                           synthetic_per_class=8, synthetic_size=16, work_dir=work)
    return sim.prepare_data(opts), opts


def test_prepare_data_splits_once_and_reuses_the_split(data5, caplog):
    data, opts = data5
    assert data.hospitals == [f"hospital-{i}" for i in range(1, 6)]
    assert data.split == "iid" and data.dataset_label == "synthetic"
    assert data.manifest["clients"] == 5 and set(data.manifest["hospitals"]) == set(data.hospitals)
    assert all((data.root / h).is_dir() for h in data.hospitals) and (data.root / "test").is_dir()
    stamp = (data.root / "manifest.json").stat().st_mtime_ns
    caplog.set_level("INFO", logger="hemafed.simulate")
    again = sim.prepare_data(opts)
    assert again.root == data.root and (data.root / "manifest.json").stat().st_mtime_ns == stamp
    assert "reusing the split" in caplog.text
    # other options, another split folder
    other = sim.prepare_data(sim.DataOptions(**{**vars(opts), "clients": 3}))
    assert other.root != data.root and other.hospitals == ["hospital-1", "hospital-2", "hospital-3"]


def test_prepare_data_from_existing_mounts_and_its_errors(data5, tmp_path):
    data, _ = data5
    mounted = sim.prepare_data(sim.DataOptions(data_mounts=data.root))
    assert mounted.hospitals == data.hospitals and mounted.split == "iid" and mounted.dataset_label == "synthetic"
    assert sim.prepare_data(sim.DataOptions(data_mounts=data.root, clients=2)).hospitals == ["hospital-1",
                                                                                             "hospital-2"]
    with pytest.raises(sim.SimulationError, match="--clients 9 but .* has only 5 hospital folders"):
        sim.prepare_data(sim.DataOptions(data_mounts=data.root, clients=9))
    with pytest.raises(sim.SimulationError, match="no hospital-\\* folders"):
        sim.prepare_data(sim.DataOptions(data_mounts=tmp_path))
    with pytest.raises(sim.SimulationError, match="--clients is required"):
        sim.prepare_data(sim.DataOptions(work_dir=tmp_path))
    with pytest.raises(sim.SimulationError, match="data split: .*"):
        sim.prepare_data(sim.DataOptions(clients=2, dataset=str(tmp_path / "nope"), work_dir=tmp_path))


@pytest.mark.parametrize("val_split", ["stratified", "random"])
def test_hospitals_hold_out_validation_by_the_chosen_method(data5, val_split):
    from hemafed.data.loader import load_image_folder, validation_split

    data, _ = data5
    apps, _ = sim.build_apps(data, val_fraction=0.25, split_seed=4, metrics=False, val_split=val_split)
    for h in data.hospitals:
        agent = apps[h].state.agent
        assert agent.settings.val_split == val_split and agent.settings.val_fraction == 0.25
        labels = load_image_folder(data.root / h, 16).labels
        _, val_idx = validation_split(labels, 0.25, 4, val_split, key=h)
        assert agent.summary(16).num_val == len(val_idx)


def test_dataset_labels_match_the_makefile():
    assert sim._dataset_label("synthetic") == "synthetic"
    assert sim._dataset_label("../shared/data/pbc-128") == "pbc-128"
    assert sim._dataset_label("pbc=../a/pbc-128,bccd=../a/bccd-crops") == "pbc+bccd"


# --------------------------------------------------------------------------- a whole simulated federation


@pytest.mark.anyio
async def test_five_hospitals_two_rounds_in_one_process(data5, tmp_path):
    data, _ = data5
    run = RunConfig.model_validate({"run_id": "sim5", "rounds": 2, "image_size": 16, "local_epochs": 1,
                                    "batch_size": 16, "max_steps_per_epoch": 2, "round_timeout": 600,
                                    "split": "iid", "dataset": "synthetic"})
    state = await sim.simulate(run, data, results_dir=tmp_path, concurrency=2)
    assert state.status == "finished", state.message
    assert [r["round"] for r in state.rounds] == [1, 2] and state.best_round in (1, 2)
    for r in state.rounds:
        assert set(r["hospitals"]) == set(data.hospitals)
        assert all(h["status"] == "ok" and h["num_examples"] > 0 and h["update_bytes"] > 10_000
                   for h in r["hospitals"].values())
    out = tmp_path / "sim5"
    assert {"run.json", "test_results.json", "best.keras", "final.keras", "rounds.csv",
            "simulation.json"} <= {p.name for p in out.iterdir()}
    info = json.loads((out / "simulation.json").read_text())
    assert info["engine"] == "simulation" and info["clients"] == 5 and info["concurrency"] == 2
    assert 1 <= info["models_built"] <= 2  # hospitals borrow from the pool: at most one model per slot
    assert info["split"] == "iid" and info["dataset"] == "synthetic" and info["wall_seconds"] > 0
    assert info["peak_rss_bytes"] > 0
    test = json.loads((out / "test_results.json").read_text())
    assert test["num_examples"] == data.manifest["test"]["total"]
    with (out / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["hospital_id"] for r in rows} == set(data.hospitals)
    # the experiment runner reads these files as it reads a stack run's
    planned = ex.PlannedRun("sim5", "s", 0, "federated", "simulation", {}, {})
    res = ex.collect(planned, tmp_path, None)
    assert res.status == "finished" and res.test_accuracy == test["accuracy"]
    per_round = [sum(h["update_bytes"] for h in r["hospitals"].values()) for r in state.rounds]
    assert res.bytes_per_round == pytest.approx(sum(per_round) / 2)
    assert [r["round"] for r in res.rounds] == [1, 2] and all(r["hospitals_ok"] == 5 for r in res.rounds)


@pytest.mark.anyio
async def test_classifier_rounds_retrain_the_classifier_on_frozen_features(data5, tmp_path):
    """FedDyn for one round, then one classifier round: the final model's feature extractor is the
    one a 1-round run of the same seed ends with (FedDyn's own rule would move it by -h/alpha)."""
    from hemafed.models import get_exchanged, load_model
    from hemafed.training import classifier_mask

    data, _ = data5
    base = {"image_size": 16, "local_epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "split": "iid",
            "dataset": "synthetic", "strategy": "feddyn", "strategy_params": {"alpha": 0.1}}
    one = RunConfig.model_validate({**base, "run_id": "dyn1", "rounds": 1})
    two = RunConfig.model_validate({**base, "run_id": "dyn1crt", "rounds": 2, "classifier_rounds": 1})
    for run in (one, two):
        state = await sim.simulate(run, data, results_dir=tmp_path, concurrency=2)
        assert state.status == "finished", state.message
    assert state.rounds[0]["report"].get("classifier_only") is None
    assert state.rounds[1]["report"]["classifier_only"] is True
    assert all(h["status"] == "ok" for h in state.rounds[1]["hospitals"].values())
    m1, m2 = (load_model(tmp_path / r / "final.keras") for r in ("dyn1", "dyn1crt"))
    heads = classifier_mask(m2)
    # the classifier round's uploads carry the classifier alone (the rest is left out as unchanged)
    head_bytes = sum(int(v.numpy().nbytes) for v, h in zip(m2.trainable_variables, heads) if h)
    sizes = [[h["update_bytes"] for h in r["hospitals"].values()] for r in state.rounds]
    assert len(sizes[0]) == len(sizes[1]) == 5
    assert all(head_bytes < b < head_bytes + 2048 for b in sizes[1]), (head_bytes, sizes[1])
    assert all(b > 10 * head_bytes for b in sizes[0])
    comm = json.loads((tmp_path / "dyn1crt" / "test_results.json").read_text())["communication"]
    assert comm["update_bytes_per_round"] == [sum(s) for s in sizes]
    # requests: round 1's /fit and /evaluate go whole (the aggregate changed every tensor); round 2's
    # /fit carries the model each hospital received for round 1's global validation, which it holds
    # (every tensor referred to, none sent), its /evaluate the re-trained classifier alone
    requests = [[h["request_bytes"] for h in r["hospitals"].values()] for r in state.rounds]
    whole = sum(int(v.numpy().nbytes) for v in m2.trainable_variables)
    assert all(2 * whole < b < 2 * whole + 16384 for b in requests[0]), (whole, requests)
    assert all(head_bytes < b < head_bytes + 8192 for b in requests[1]), (head_bytes, requests)
    assert comm["request_bytes_per_round"] == [sum(r) for r in requests]
    w1, w2 = get_exchanged(m1), get_exchanged(m2)
    assert len(w1) == len(heads)
    for a, b, head in zip(w1, w2, heads):
        if head:
            assert abs(a - b).max() > 0
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    final = json.loads((tmp_path / "dyn1crt" / "final.json").read_text())
    assert final["strategy"] == {"name": "feddyn", "fraction_fit": 1.0, "min_fit_clients": 2, "alpha": 0.1,
                                 "num_clients": None, "classifier_rounds": 1}


@pytest.mark.anyio
async def test_freeze_classifier_keeps_the_initial_classifier_through_the_rounds(data5, tmp_path):
    """FedBABU end to end (FedAvgM: momentum would move a weight whose update were not exactly 0):
    after 2 rounds the classifier is the model's initial one, bit for bit, and the rest has trained."""
    from hemafed.models import build_for_task, get_exchanged, load_model
    from hemafed.schemas import TaskSpec
    from hemafed.training import classifier_mask

    data, _ = data5
    run = RunConfig.model_validate({"image_size": 16, "local_epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2,
                                    "split": "iid", "dataset": "synthetic", "run_id": "babu", "rounds": 2,
                                    "freeze_classifier": True, "strategy": "fedavgm",
                                    "strategy_params": {"server_lr": 1.0, "server_momentum": 0.9}})
    state = await sim.simulate(run, data, results_dir=tmp_path, concurrency=2)
    assert state.status == "finished", state.message
    final = load_model(tmp_path / "babu" / "final.keras")
    task = TaskSpec.model_validate(json.loads((tmp_path / "babu" / "final.json").read_text())["task"])
    initial = build_for_task(task)
    heads = classifier_mask(final)
    for a, b, head in zip(get_exchanged(initial), get_exchanged(final), heads):
        if head:
            np.testing.assert_array_equal(b, a)
        else:
            assert abs(a - b).max() > 0


@pytest.mark.anyio
async def test_init_run_starts_a_federation_from_a_finished_runs_final_weights(data5, tmp_path):
    """A 1-round run, then a run of classifier rounds only from its final weights (INIT_RUN) with the
    classifier rounds' own settings: every weight but the classifier's is the finished run's, the
    start is recorded, and a missing run or a run of another task fails the run with the reason."""
    from hemafed.models import get_exchanged, load_model
    from hemafed.training import classifier_mask

    data, _ = data5
    base = {"image_size": 16, "local_epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "split": "iid",
            "dataset": "synthetic", "seed": 3}
    first = RunConfig.model_validate({**base, "run_id": "first", "rounds": 1})
    state = await sim.simulate(first, data, results_dir=tmp_path, concurrency=2)
    assert state.status == "finished" and state.initialised_from is None
    # every round a classifier round: allowed only because the features come trained
    crt = RunConfig.model_validate({**base, "run_id": "crt", "rounds": 1, "classifier_rounds": 1, "init_run": "first",
                                    "classifier_learning_rate": 0.05, "classifier_optimizer": "sgd",
                                    "classifier_epochs": 2, "classifier_augment": "false"})
    state = await sim.simulate(crt, data, results_dir=tmp_path, concurrency=2)
    assert state.status == "finished", state.message
    first_meta = json.loads((tmp_path / "first" / "final.json").read_text())
    expected = {"run_id": "first", "path": str(tmp_path / "first" / "final.keras"), "rounds": 1,
                "strategy": first_meta["strategy"], "best_val_accuracy": first_meta["best_val_accuracy_median"]}
    assert state.initialised_from == expected
    assert json.loads((tmp_path / "crt" / "run.json").read_text())["initialised_from"] == expected
    final = json.loads((tmp_path / "crt" / "final.json").read_text())
    assert final["initialised_from"] == expected
    assert final["strategy"] == {"name": "fedavg", "fraction_fit": 1.0, "min_fit_clients": 2, "server_lr": 1.0,
                                 "weighted": True, "classifier_rounds": 1, "classifier_learning_rate": 0.05,
                                 "classifier_local_epochs": 2, "classifier_optimizer": "sgd",
                                 "classifier_augment": False}
    hospitals = state.rounds[0]["hospitals"]
    assert state.rounds[0]["report"]["classifier_only"] is True
    assert all(h["status"] == "ok" for h in hospitals.values())
    m1, m2 = (load_model(tmp_path / r / "final.keras") for r in ("first", "crt"))
    heads = classifier_mask(m2)
    assert any(heads) and not all(heads)
    for a, b, head in zip(get_exchanged(m1), get_exchanged(m2), heads):
        if head:
            assert abs(a - b).max() > 0
        else:  # the finished run's extractor, bit for bit (a fresh start would differ: seed 3 vs trained)
            np.testing.assert_array_equal(b, a)

    # at another image size: the same extractor (global average pooling: the weights fit any size), and
    # the start records the size the finished run trained at
    larger = crt.model_copy(update={"run_id": "crt-larger", "image_size": 24})
    state = await sim.simulate(larger, data, results_dir=tmp_path, concurrency=2)
    assert state.status == "finished", state.message
    assert state.initialised_from == {**expected, "image_size": 16}
    m3 = load_model(tmp_path / "crt-larger" / "final.keras")
    assert m3.input_shape == (None, 24, 24, 3)
    for a, b, head in zip(get_exchanged(m1), get_exchanged(m3), heads):
        if not head:
            np.testing.assert_array_equal(b, a)

    # refused with the reason, nothing of the finished run lost
    missing = crt.model_copy(update={"run_id": "crt-missing", "init_run": "no-such-run"})
    state = await sim.simulate(missing, data, results_dir=tmp_path, concurrency=2)
    assert state.status == "failed" and "INIT_RUN=no-such-run: no final.keras and final.json" in state.message
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "final.keras").write_bytes((tmp_path / "first" / "final.keras").read_bytes())
    (other / "final.json").write_text(json.dumps({**first_meta, "task": {**first_meta["task"], "model": "cnn-deep"}}))
    state = await sim.simulate(crt.model_copy(update={"run_id": "crt-other", "init_run": "other-model"}), data,
                               results_dir=tmp_path, concurrency=2)
    assert state.status == "failed"
    assert "INIT_RUN=other-model trained another task: model 'cnn-deep' there, 'cnn' here" in state.message
    assert (tmp_path / "first" / "final.keras").is_file() and (tmp_path / "first" / "test_results.json").is_file()


def test_cli_runs_with_per_hospital_models_under_fedbn(data5, tmp_path, capsys):
    data, _ = data5
    rc = sim.main(["--data-mounts", str(data.root), "--clients", "2", "--rounds", "1", "--local-norm", "true",
                   "--results-dir", str(tmp_path), "--run-id", "cli", "--concurrency", "1",
                   "--max-steps-per-epoch", "2", *SMALL[6:]])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "simulation cli: 2 hospitals in one process (concurrency 1), iid split of synthetic, 1 rounds" in out
    assert "run cli finished: best round 1" in out
    info = json.loads((tmp_path / "cli" / "simulation.json").read_text())
    assert info["models_built"] == 2  # FedBN keeps normalisation layers per hospital: no pool (else 1)
    state = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert state["status"] == "finished" and len(state["rounds"]) == 1


def test_cli_a_failed_run_exits_1(data5, tmp_path, capsys):
    data, _ = data5
    rc = sim.main(["--data-mounts", str(data.root), "--clients", "2", "--min-clients", "3", "--rounds", "1",
                   "--results-dir", str(tmp_path), "--run-id", "few", *SMALL[6:]])
    assert rc == 1
    assert "run few failed: only 2 of 2 hospitals became healthy within 300s; MIN_CLIENTS is 3" in \
        capsys.readouterr().err
    assert json.loads((tmp_path / "few" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("argv, needle", [
    (["--clients", "3", "--rounds", "0"], "--rounds: Input should be greater than or equal to 1"),
    (["--clients", "3", "--strategy-params", "[1]"], "STRATEGY_PARAMS must be a JSON object"),
    (["--clients", "3", "--schedule", "daily"], "--schedule: Input should be 'full', 'weekly' or 'weekly-recycle'"),
    (["--clients", "3", "--run-id", "bad id"], "--run-id: String should match pattern"),
    (["--clients", "0"], "--clients must be >= 1"),
    (["--clients", "3", "--concurrency", "0"], "--concurrency must be >= 1"),
    (["--clients", "x"], "argument --clients: invalid int value: 'x'"),
    (["--rundz", "3"], "unrecognized arguments: --rundz 3"),
    (["--rounds", "1"], "--clients is required"),
    (["--clients", "3", "--val-split", "by_site"], "argument --val-split: invalid choice: 'by_site'"),
])
def test_cli_bad_options_exit_2_with_the_reason(argv, needle, capsys, tmp_path):
    assert sim.main([*argv, "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simulate: error: ") and needle in err, err


def test_cli_unknown_strategy_exits_2(data5, tmp_path, capsys):
    data, _ = data5
    rc = sim.main(["--data-mounts", str(data.root), "--strategy", "fedmagic", "--results-dir", str(tmp_path)])
    assert rc == 2
    assert "fedmagic" in capsys.readouterr().err


def test_the_environment_does_not_leak_into_the_run_config(monkeypatch):
    monkeypatch.setenv("ROUNDS", "99")
    monkeypatch.setenv("RUN_ID", "from-env")
    run, data, _ = sim.parse(["--clients", "2"])
    assert run.rounds == RunConfig.model_fields["rounds"].default and run.run_id.startswith("sim-")
    assert run.round_timeout == sim.DEFAULT_ROUND_TIMEOUT
