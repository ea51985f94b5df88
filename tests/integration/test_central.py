"""`make central` on the synthetic stack's data: the centralized baseline container pools exactly the
hospitals' training splits, writes the same report files as a federated run, shows in the metrics
API as a run with strategy "centralized", and a federated report can compare against it."""

from __future__ import annotations

import csv
import json
import subprocess
import time

import pytest

from tests.integration.conftest import ROOT

#: the synthetic stack run of test_stack.py (same name and options: `stack.up` runs it once)
STACK_RUN = {"clients": 3, "rounds": 3, "split": "iid", "local_epochs": 2}
EPOCHS = 2  # a short centralized run: the budget default (ROUNDS x LOCAL_EPOCHS) is covered in process


@pytest.fixture(scope="module")
def stack_run(stack):
    return stack.up("synthetic", **STACK_RUN)


@pytest.fixture(scope="module")
def central(stack, stack_run):
    run_id = f"test-central-{int(time.time())}"
    args = ["make", "--no-print-directory", "central", f"RUN_ID={run_id}", f"CLIENTS={stack_run.clients}",
            f"DATA_MOUNTS={stack_run.data_mounts}", f"RESULTS_DIR={stack_run.results_dir}",
            f"ROUNDS={STACK_RUN['rounds']}", f"LOCAL_EPOCHS={STACK_RUN['local_epochs']}",
            f"SPLIT={STACK_RUN['split']}", f"EPOCHS={EPOCHS}"]
    t0 = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{' '.join(args)}` exited {proc.returncode}:\n{out[-6000:]}"
    return run_id, out, time.monotonic() - t0


def test_make_central_reports_its_outcome(central):
    run_id, out, _ = central
    assert f"run {run_id}: centralized baseline on the pooled data of 3 hospitals" in out
    assert f"run {run_id} finished: best epoch " in out and f"/{EPOCHS}, test accuracy " in out


def test_central_results_files(central, stack_run):
    run_id, _, _ = central
    out = stack_run.results_dir / run_id
    for f in ("best.keras", "final.keras", "best.json", "run.json", "test_results.json", "confusion_matrix.csv",
              "confusion_matrix.png", "per_class.csv", "per_image.csv"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    test = json.loads((out / "test_results.json").read_text())
    assert test["strategy"] == "centralized" and test["run_id"] == run_id
    assert test["timing"]["epochs"] == EPOCHS and test["timing"]["training_seconds"] > 0
    assert len(test["classes"]) == 8 and len(test["confusion_matrix"]) == 8
    assert test["accuracy"] > 0.3  # 2 epochs on the synthetic data; chance is 0.125
    assert 0.0 <= test["macro_auc"] <= 1.0
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == test["num_examples"] == sum(map(sum, test["confusion_matrix"]))
    assert sum(r["top1"] == r["true"] for r in rows) / len(rows) == pytest.approx(test["accuracy"])


def test_central_pools_exactly_the_hospitals_training_splits(stack, central, stack_run):
    run_id, _, _ = central
    fed = stack.api(f"/api/runs/{stack_run.run_id}").json()
    hospital_data = fed["config"]["hospital_data"]  # what each hospital told the aggregator
    test = json.loads((stack_run.results_dir / run_id / "test_results.json").read_text())
    pooled = test["pooled"]["hospitals"]
    assert set(pooled) == set(hospital_data)
    for h, info in hospital_data.items():
        assert (pooled[h]["num_train"], pooled[h]["num_val"]) == (info["num_train"], info["num_val"]), h
    assert test["pooled"]["num_train"] == sum(i["num_train"] for i in hospital_data.values())
    # the federated run was scored on the same held-out test set
    assert test["num_examples"] == fed["test_results"]["num_examples"]


def test_central_run_in_the_metrics_api(stack, central):
    run_id, _, _ = central
    r = stack.api(f"/api/runs/{run_id}")
    assert r.status_code == 200
    run = r.json()
    assert run["status"] == "finished" and run["strategy"] == "centralized"
    assert run["rounds_total"] == run["rounds_completed"] == EPOCHS
    assert run["test_accuracy"] == run["test_results"]["accuracy"]
    rounds = stack.api(f"/api/runs/{run_id}/rounds").json()
    assert [x["round"] for x in rounds] == list(range(1, EPOCHS + 1))
    for x in rounds:
        m = x["hospitals"]["central"]
        assert m["status"] == "ok" and m["num_examples"] > 0 and m["update_bytes"] == 0
        assert 0.0 <= x["global"]["val_accuracy_median"] <= 1.0
    services = {s["service"] for s in stack.api(f"/api/runs/{run_id}/resources").json()}
    assert "central" in services
