"""`make experiment CONFIG=experiments/smoke.yaml` on the real stack: 2 scenarios (IID, non-IID) x
2 rounds x 3 hospitals, 28 px synthetic images. The runner brings the stack up and down for every
run, so it runs in a compose project and ports of its own: the session stack (and the runs other
tests cached on it) stays as it is."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.integration.conftest import AGGREGATOR_PORT, METRICS_PORT, PROJECT, ROOT, _make_env

EXP_PROJECT = f"{PROJECT}exp"
EXP_METRICS_PORT = int(os.environ.get("HEMAFED_TEST_EXPERIMENT_METRICS_PORT", str(METRICS_PORT + 1)))
EXP_AGGREGATOR_PORT = int(os.environ.get("HEMAFED_TEST_EXPERIMENT_AGGREGATOR_PORT", str(AGGREGATOR_PORT + 1)))
SCENARIOS = ["iid", "noniid"]
ROUNDS = 2
CLIENTS = 3


def _env() -> dict[str, str]:
    return {**os.environ, "COMPOSE_PROJECT_NAME": EXP_PROJECT, "METRICS_PORT": str(EXP_METRICS_PORT),
            "AGGREGATOR_PORT": str(EXP_AGGREGATOR_PORT)}


def _make_experiment(out) -> tuple[subprocess.CompletedProcess, float]:
    args = ["make", "--no-print-directory", "experiment", "CONFIG=experiments/smoke.yaml",
            f"RESULTS_DIR={out / 'results'}", f"DATA_MOUNTS={out / 'data'}"]
    t0 = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    return proc, time.monotonic() - t0


@pytest.fixture(scope="module")
def smoke(stack, tmp_path_factory):  # `stack`: skips without Docker (nothing of it is started here)
    out = tmp_path_factory.mktemp("experiment")
    proc, seconds = _make_experiment(out)
    yield proc, out, seconds
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    subprocess.run([*compose, "-p", EXP_PROJECT, "--profile", "h10", "down", "-v", "--remove-orphans"], cwd=ROOT,
                   env={**os.environ, **_make_env(), "COMPOSE_PROJECT_NAME": EXP_PROJECT}, capture_output=True,
                   timeout=300)


def test_make_experiment_writes_the_table_csv_and_plot(smoke):
    proc, out, seconds = smoke
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "2/2 run(s) finished" in proc.stdout
    exp = out / "results" / "experiments" / "smoke"
    with (exp / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run_id"] for r in rows] == [f"smoke-{s}-0" for s in SCENARIOS]
    for row, scenario in zip(rows, SCENARIOS):
        assert row["scenario"] == scenario and row["seed"] == "0" and row["status"] == "finished", row
        assert row["settings"] == f"split={scenario}" and row["kind"] == "federated" and row["engine"] == "stack"
        assert row["best_round"] in ("1", "2")
        assert 0.0 <= float(row["best_val"]) <= 1.0 and 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert 0.0 <= float(row["macro_f1"]) <= 1.0
        assert 0 < float(row["train_seconds"]) < float(row["wall_seconds"]) < seconds
        # 3 hospitals x the compact CNN's float32 weights at 28 px (> 100 kB each)
        assert float(row["bytes_per_round"]) > CLIENTS * 100_000
        assert row["message"] == ""
        # the runner read the run's config back from the metrics API: every setting reached the aggregator
        record = json.loads((exp / "runs" / f"{row['run_id']}.json").read_text())
        assert record["status"] == "finished" and record["returncode"] == 0
        assert record["config_check"] == "ok", record
        run = json.loads((out / "results" / row["run_id"] / "run.json").read_text())
        assert run["status"] == "finished" and len(run["rounds"]) == ROUNDS
        test = json.loads((out / "results" / row["run_id"] / "test_results.json").read_text())
        assert float(row["test_accuracy"]) == pytest.approx(test["accuracy"], abs=5e-5)
    with (exp / "accuracy_per_round.csv").open() as f:
        per_round = list(csv.DictReader(f))
    assert [(r["scenario"], r["round"]) for r in per_round] == [(s, str(k)) for s in SCENARIOS
                                                                for k in range(1, ROUNDS + 1)]
    assert all(r["hospitals_ok"] == str(CLIENTS) and int(r["bytes"]) > 0 for r in per_round)
    md = (exp / "results.md").read_text()
    assert "# Experiment `smoke`" in md and "| scenario | seed | settings |" in md
    assert "| iid | 0 | split=iid | finished |" in md and "| noniid | 0 | split=noniid | finished |" in md
    png = (exp / "accuracy_per_round.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # one data folder per distinct split, under the DATA_MOUNTS given
    splits = sorted(json.loads(p.read_text())["split"] for p in (out / "data").glob("split-*/manifest.json"))
    assert splits == ["iid", "noniid"]


def test_a_second_make_experiment_skips_the_finished_runs(smoke):
    proc, out, _ = smoke
    assert proc.returncode == 0
    again, seconds = _make_experiment(out)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert again.stdout.count("results exist, skipped") == 2
    assert seconds < 60  # no stack was started
