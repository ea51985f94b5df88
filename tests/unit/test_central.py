"""The centralized baseline (hemafed_hospital.central): pooling with the hospitals' own split, and a
tiny in-process run reported to the real metrics service (ASGI transport, synthetic 16 px)."""

from __future__ import annotations

import csv
import json

import httpx
import numpy as np
import pytest

from hemafed_hospital.agent import HospitalAgent
from hemafed_hospital.central import CentralError, CentralSettings, hospital_dirs, pool_hospitals, run_central
from hemafed_hospital.settings import HospitalSettings
from hemafed_metrics.app import create_app as metrics_app
from hemafed_metrics.store import InMemoryStore
from tests.unit.helpers import RoutingTransport, synthetic_folder

SIZE = 16


@pytest.fixture(scope="module")
def mounts(tmp_path_factory):
    """A split tool's output: three hospitals (hospital-2 holds only 3 classes) and a test set."""
    root = tmp_path_factory.mktemp("mounts")
    synthetic_folder(root / "hospital-1", n_per_class=4, size=SIZE, seed=1)
    synthetic_folder(root / "hospital-2", n_per_class=5, size=SIZE, seed=2,
                     classes=["basophil", "eosinophil", "platelet"])
    synthetic_folder(root / "hospital-10", n_per_class=3, size=SIZE, seed=3)
    synthetic_folder(root / "test", n_per_class=2, size=SIZE, seed=9)
    (root / "manifest.json").write_text("{}")
    return root


def test_hospital_folders_in_numeric_order(mounts):
    assert [p.name for p in hospital_dirs(mounts)] == ["hospital-1", "hospital-2", "hospital-10"]
    assert hospital_dirs(mounts / "test") == []


@pytest.mark.parametrize("val_split", ["stratified", "random"])
def test_pooling_uses_exactly_the_hospitals_own_splits(mounts, val_split):
    dirs = hospital_dirs(mounts)
    pooled = pool_hospitals(dirs, SIZE, val_fraction=0.25, split_seed=3, val_split=val_split)
    assert len(pooled.classes) == 8 and pooled.classes == sorted(pooled.classes)
    n_train = n_val = 0
    for d in dirs:
        agent = HospitalAgent(HospitalSettings(hospital_id=d.name, data_dir=d, val_fraction=0.25, split_seed=3,
                                               val_split=val_split))
        summary = agent.summary(SIZE)
        info = pooled.hospitals[d.name]
        assert (info["num_train"], info["num_val"]) == (summary.num_train, summary.num_val)
        assert info["classes"] == summary.classes
        local = agent.data(SIZE)
        # the same images: the agent's training split, relabelled into the pooled class list
        lo = n_train
        assert np.array_equal(pooled.x_train[lo:lo + summary.num_train], local.x_train)
        assert [pooled.classes[i] for i in pooled.y_train[lo:lo + summary.num_train]] == \
            [local.local_classes[i] for i in local.y_train]
        assert np.array_equal(pooled.x_val[n_val:n_val + summary.num_val], local.x_val)
        n_train += summary.num_train
        n_val += summary.num_val
    assert len(pooled.y_train) == n_train == len(pooled.x_train)
    assert len(pooled.y_val) == n_val
    assert pooled.hospitals["hospital-2"]["num_train"] + pooled.hospitals["hospital-2"]["num_val"] == 15


def test_pooling_with_a_fixed_class_list_and_bad_input(mounts):
    dirs = hospital_dirs(mounts)
    pooled = pool_hospitals(dirs, SIZE, val_fraction=0.25, split_seed=0, classes=["platelet", "basophil"])
    assert pooled.classes == ["platelet", "basophil"]
    assert set(pooled.y_train.tolist()) == {0, 1}
    # 4 + 5 + 3 images of each of the two classes, train + val
    assert len(pooled.y_train) + len(pooled.y_val) == 2 * (4 + 5 + 3)
    with pytest.raises(CentralError, match="no hospital folders"):
        pool_hospitals([], SIZE, val_fraction=0.25, split_seed=0)
    with pytest.raises(CentralError, match="fewer than 2 classes"):
        pool_hospitals(dirs, SIZE, val_fraction=0.25, split_seed=0, classes=["platelet"])


def test_settings_budget_and_validation(monkeypatch):
    monkeypatch.setenv("ROUNDS", "4")
    monkeypatch.setenv("LOCAL_EPOCHS", "3")
    monkeypatch.setenv("CLASSES", "a, b")
    s = CentralSettings()
    assert s.total_epochs == 12 and s.classes == ["a", "b"]
    assert s.test_path == s.data_root / "test"
    monkeypatch.setenv("EPOCHS", "5")
    assert CentralSettings().total_epochs == 5
    for key, bad in (("OPTIMIZER", "lbfgs"), ("RUN_ID", "../x"), ("IMAGE_SIZE", "8")):
        monkeypatch.setenv(key, bad)
        with pytest.raises(ValueError):
            CentralSettings()
        monkeypatch.delenv(key)


def _settings(mounts, tmp_path, **kw) -> CentralSettings:
    return CentralSettings(data_root=mounts, output_dir=tmp_path / "results", metrics_url="http://metrics",
                           wait_for_metrics=2, run_id="central-t", image_size=SIZE, rounds=1, local_epochs=1,
                           batch_size=16, split="iid", dataset="synthetic", **kw)


@pytest.mark.anyio
async def test_a_tiny_centralized_run_end_to_end(mounts, tmp_path):
    store = InMemoryStore()
    http = httpx.AsyncClient(transport=RoutingTransport({"metrics": metrics_app(store=store)}))
    code = await run_central(_settings(mounts, tmp_path), http=http, report_resources=False)
    assert code == 0
    out = tmp_path / "results" / "central-t"
    assert {p.name for p in out.iterdir()} >= {"best.keras", "final.keras", "best.json", "final.json", "run.json",
                                               "test_results.json", "confusion_matrix.csv", "confusion_matrix.png",
                                               "per_class.csv", "per_image.csv"}
    test = json.loads((out / "test_results.json").read_text())
    assert test["strategy"] == "centralized" and test["best_round"] == 1
    assert test["num_examples"] == 16 and len(test["confusion_matrix"]) == 8
    assert sum(map(sum, test["confusion_matrix"])) == 16
    assert 0.0 <= test["accuracy"] <= 1.0 and test["loss"] > 0
    assert set(test["per_class"]["basophil"]) == {"precision", "recall", "f1", "specificity", "auc", "support"}
    assert test["timing"]["epochs"] == 1 and test["timing"]["training_seconds"] > 0
    assert test["timing"]["wall_seconds"] >= test["timing"]["training_seconds"]
    assert test["communication"]["update_bytes_total"] == 0
    assert test["communication"]["total_parameters"] == test["communication"]["trainable_parameters"] > 1000
    pooled = test["pooled"]
    assert set(pooled["hospitals"]) == {"hospital-1", "hospital-2", "hospital-10"}
    assert pooled["num_train"] == sum(h["num_train"] for h in pooled["hospitals"].values())
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and all(r["file"].split("/")[0] == r["true"] for r in rows)
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "finished" and state["rounds_completed"] == 1
    assert state["test_accuracy"] == test["accuracy"]

    run = store.get_run("central-t")
    assert run.status.value == "finished" and run.strategy == "centralized"
    assert run.rounds_total == 1 and run.rounds_completed == 1 and run.clients == 1
    assert run.test_accuracy == test["accuracy"] and run.best_round == 1
    assert run.config["epochs"] == 1 and run.config["num_train"] == pooled["num_train"]
    [r] = store.list_rounds("central-t")
    m = r.hospitals["central"]
    assert m.status == "ok" and m.num_examples == pooled["num_train"] and m.update_bytes == 0
    assert r.global_.val_accuracy_median == m.val_accuracy
    await http.aclose()


@pytest.mark.anyio
async def test_a_run_without_data_fails_cleanly(tmp_path):
    (tmp_path / "empty").mkdir()
    store = InMemoryStore()
    http = httpx.AsyncClient(transport=RoutingTransport({"metrics": metrics_app(store=store)}))
    code = await run_central(_settings(tmp_path / "empty", tmp_path), http=http, report_resources=False)
    assert code == 1
    state = json.loads((tmp_path / "results" / "central-t" / "run.json").read_text())
    assert state["status"] == "failed" and "no hospital-* folders" in state["message"]
    await http.aclose()


@pytest.mark.anyio
async def test_cosine_epochs_carry_the_optimizer_and_record_each_rate(mounts, tmp_path):
    store = InMemoryStore()
    http = httpx.AsyncClient(transport=RoutingTransport({"metrics": metrics_app(store=store)}))
    s = _settings(mounts, tmp_path, epochs=3, learning_rate=0.01, lr_schedule="cosine", lr_min_fraction=0.1,
                  max_steps_per_epoch=2)
    assert await run_central(s, http=http, report_resources=False) == 0
    rounds = store.list_rounds("central-t")
    # 0.001 + 0.009 (1 + cos(pi (t-1)/3)) / 2 for t = 1, 2, 3
    assert [r.report["learning_rate"] for r in rounds] == pytest.approx([0.01, 0.001 + 0.009 * 0.75,
                                                                         0.001 + 0.009 * 0.25])
    assert [r.report["steps"] for r in rounds] == [2, 2, 2]
    await http.aclose()


@pytest.mark.anyio
async def test_warmup_moving_average_and_test_time_augmentation(mounts, tmp_path):
    store = InMemoryStore()
    http = httpx.AsyncClient(transport=RoutingTransport({"metrics": metrics_app(store=store)}))
    s = _settings(mounts, tmp_path, epochs=3, learning_rate=0.01, lr_warmup_epochs=2, ema_decay=0.9, tta=True,
                  max_steps_per_epoch=2)
    assert await run_central(s, http=http, report_resources=False) == 0
    rounds = store.list_rounds("central-t")
    # 2 warm-up epochs of 2 steps: 0.0025, 0.005 | 0.0075, 0.01 | then the constant 0.01
    assert [r.report["learning_rate"] for r in rounds] == [0.01] * 3
    assert [r.report.get("warmup_learning_rates") for r in rounds] == [pytest.approx([0.0025, 0.005]),
                                                                       pytest.approx([0.0075, 0.01]), None]
    assert [r.report["ema_updates"] for r in rounds] == [2, 4, 6]
    out = tmp_path / "results" / "central-t"
    test = json.loads((out / "test_results.json").read_text())
    assert test["weights"] == "moving average (decay 0.9)"
    assert test["per_source"] is None  # the synthetic test images carry no source prefix
    tta = test["test_time_augmentation"]
    assert tta["views"] == 8 and set(tta["single_view"]) == {"accuracy", "macro_f1", "loss"}
    assert 0.0 <= tta["single_view"]["accuracy"] <= 1.0
    # the kept model is the averaged one: its validation accuracy is the one recorded for its epoch
    from hemafed.models import load_model
    from hemafed.training import LocalTrainer, evaluate
    from hemafed_hospital.central import hospital_dirs, pool_hospitals

    data = pool_hospitals(hospital_dirs(mounts), SIZE, val_fraction=s.val_fraction, split_seed=s.split_seed)
    best = LocalTrainer(load_model(out / "best.keras"))
    best_round = rounds[test["best_round"] - 1]
    assert evaluate(best, data.x_val, data.y_val, len(data.classes)).accuracy == pytest.approx(
        best_round.global_.val_accuracy_median)
    await http.aclose()


def test_settings_refuse_a_bad_moving_average_or_warmup(monkeypatch):
    from pydantic import ValidationError

    for field, value in (("ema_decay", 1.0), ("ema_decay", -0.1), ("lr_warmup_epochs", -1)):
        with pytest.raises(ValidationError, match=field):
            CentralSettings(**{field: value})


@pytest.mark.anyio
async def test_init_run_continues_an_earlier_run_from_its_final_weights(mounts, tmp_path):
    from hemafed.models import build_for_task, load_model
    from hemafed.schemas import TaskSpec

    store = InMemoryStore()
    http = httpx.AsyncClient(transport=RoutingTransport({"metrics": metrics_app(store=store)}))
    first = _settings(mounts, tmp_path, epochs=2, learning_rate=0.01, max_steps_per_epoch=2)
    assert await run_central(first, http=http, report_resources=False) == 0
    earlier = tmp_path / "results" / "central-t"
    earlier_final = load_model(earlier / "final.keras").get_weights()
    task = TaskSpec(model="cnn", image_size=SIZE, classes=json.loads((earlier / "final.json").read_text())["task"]
                    ["classes"], seed=0)
    initial = build_for_task(task).get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(initial, earlier_final)) > 1e-3  # training moved them

    # a rate of 1e-9 leaves the weights where they start: the continued run starts at the earlier final
    # weights (and so does its moving average), not at the fresh initialisation
    again = _settings(mounts, tmp_path, epochs=1, learning_rate=1e-9, max_steps_per_epoch=2, init_run="central-t",
                      ema_decay=0.9).model_copy(update={"run_id": "central-t2"})
    assert await run_central(again, http=http, report_resources=False) == 0
    out = tmp_path / "results" / "central-t2"
    final = load_model(out / "final.keras").get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(final, earlier_final)) < 1e-5
    test = json.loads((out / "test_results.json").read_text())
    meta = json.loads((earlier / "final.json").read_text())
    assert test["initialised_from"] == {"run_id": "central-t", "path": str(earlier / "final.keras"), "epochs": 2,
                                        "strategy": "centralized", "best_val_accuracy": meta["best_val_accuracy"]}
    assert store.get_run("central-t2").config["initialised_from"]["run_id"] == "central-t"
    plain = json.loads((earlier / "test_results.json").read_text())
    assert plain["initialised_from"] is None

    # at another image size (FixRes, progressive resizing): the same weights, since the model ends in
    # global average pooling; the start records the size the earlier run trained at
    larger = again.model_copy(update={"run_id": "central-t3", "image_size": 2 * SIZE})
    assert await run_central(larger, http=http, report_resources=False) == 0
    out = tmp_path / "results" / "central-t3"
    resized = load_model(out / "final.keras")
    assert resized.input_shape == (None, 2 * SIZE, 2 * SIZE, 3)
    assert max(float(np.abs(a - b).max()) for a, b in zip(resized.get_weights(), earlier_final)) < 1e-5
    test = json.loads((out / "test_results.json").read_text())
    assert test["initialised_from"] == {"run_id": "central-t", "path": str(earlier / "final.keras"), "epochs": 2,
                                        "strategy": "centralized", "best_val_accuracy": meta["best_val_accuracy"],
                                        "image_size": SIZE}
    assert json.loads((out / "final.json").read_text())["task"]["image_size"] == 2 * SIZE

    # refused with the reason: a run that does not exist, and one that trained another model or classes
    classes = meta["task"]["classes"]
    for run_id, edit, reason in (("nothing-here", None, "no final.keras and final.json"),
                                 ("other-model", {"model": "cnn-wide"}, "model 'cnn-wide' there, 'cnn' here"),
                                 ("other-classes", {"classes": classes[::-1]},
                                  f"classes {classes[::-1]!r} there, {classes!r} here")):
        if edit:
            other = tmp_path / "results" / run_id
            other.mkdir()
            (other / "final.keras").write_bytes((earlier / "final.keras").read_bytes())
            (other / "final.json").write_text(json.dumps({**meta, "task": {**meta["task"], **edit}}))
        bad = again.model_copy(update={"run_id": "central-bad", "init_run": run_id})
        assert await run_central(bad, http=http, report_resources=False) == 1
        state = json.loads((tmp_path / "results" / "central-bad" / "run.json").read_text())
        assert state["status"] == "failed" and reason in state["message"], state["message"]
    assert (earlier / "final.keras").is_file() and (earlier / "test_results.json").is_file()  # nothing lost
    await http.aclose()


def test_init_run_must_be_a_run_id(monkeypatch):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="init_run"):
        CentralSettings(init_run="../elsewhere")
    monkeypatch.setenv("INIT_RUN", "central-20260101")
    assert CentralSettings().init_run == "central-20260101"
