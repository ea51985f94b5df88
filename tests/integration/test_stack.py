"""The default stack on the embedded synthetic dataset: 3 hospitals, a few rounds, real HTTP
between containers, checked through the metrics API and the Docker SDK."""

from __future__ import annotations

import json

import docker
import pytest

from tests.integration.conftest import PROJECT

CLIENTS = 3
ROUNDS = 3
HOSPITALS = [f"hospital-{i}" for i in range(1, CLIENTS + 1)]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@pytest.fixture(scope="module")
def run(stack):
    return stack.up("synthetic", clients=CLIENTS, rounds=ROUNDS, split="iid", local_epochs=2)


def test_make_up_reports_progress_and_result(run):
    assert f"round {ROUNDS}/{ROUNDS}" in run.output
    assert f"run {run.run_id} finished" in run.output
    assert f"{run.results_dir}/{run.run_id}/" in run.output


def test_run_finished_with_every_hospital_and_round(stack, run):
    r = stack.api("/api/runs")
    assert r.status_code == 200
    runs = {x["id"]: x for x in r.json()}
    assert run.run_id in runs
    info = runs[run.run_id]
    assert info["status"] == "finished"
    assert info["rounds_total"] == ROUNDS
    assert info["rounds_completed"] == ROUNDS
    assert info["clients"] == CLIENTS
    assert info["split"] == "iid"
    assert info["model"] == "cnn"
    assert info["test_accuracy"] > 0.5  # 8 classes: chance is 0.125

    rounds = stack.api(f"/api/runs/{run.run_id}/rounds").json()
    assert [x["round"] for x in rounds] == list(range(1, ROUNDS + 1))
    for entry in rounds:
        assert set(entry["hospitals"]) == set(HOSPITALS)
        for h in HOSPITALS:
            hm = entry["hospitals"][h]
            assert hm["status"] == "ok", (entry["round"], h, hm)
            assert hm["num_examples"] > 0
            assert hm["update_bytes"] > 100_000  # a real weight update travelled
            assert hm["fit_seconds"] > 0
            assert 0.0 <= hm["val_accuracy"] <= 1.0
            assert hm["train_loss"] > 0
        g = entry["global"]
        assert 0.0 <= g["val_accuracy_median"] <= 1.0
        assert 0.0 <= g["val_accuracy_mean"] <= 1.0
        assert g["val_loss"] > 0
    # training made progress: the last round beats the first
    assert rounds[-1]["global"]["val_accuracy_mean"] > rounds[0]["global"]["val_accuracy_mean"]


def test_resource_samples_for_every_service(stack, run):
    r = stack.api(f"/api/runs/{run.run_id}/resources")
    assert r.status_code == 200
    samples = r.json()
    services = {s["service"] for s in samples}
    assert {"aggregator", "metrics", *HOSPITALS} <= services
    for s in samples:
        assert s["rss_bytes"] > 0
        assert s["cpu_percent"] >= 0
        assert s["gpu_util"] is None and s["gpu_mem_bytes"] is None  # CI has no GPU: recorded as absent


def test_results_on_the_aggregator_volume(run):
    out = run.results_dir / run.run_id
    assert (out / "best.keras").stat().st_size > 10_000
    assert (out / "final.keras").stat().st_size > 10_000
    meta = json.loads((out / "best.json").read_text())
    assert meta["kind"] == "best" and meta["best_round"] in range(1, ROUNDS + 1)
    test = json.loads((out / "test_results.json").read_text())
    assert test["num_examples"] > 0
    assert len(test["confusion_matrix"]) == len(test["classes"]) == 8
    assert 0 < test["macro_f1"] <= 1


def test_manifest_and_disjoint_hospital_mounts(run):
    manifest = json.loads((run.data_mounts / "manifest.json").read_text())
    assert manifest["split"] == "iid"
    seen: dict[str, str] = {}
    for where in [*HOSPITALS, "test"]:
        for f in (run.data_mounts / where).rglob("*"):
            if f.is_file():
                assert f.name not in seen, f"{f.name} is in both {seen[f.name]} and {where}"
                seen[f.name] = where


def _hospital_url(stack, h: str) -> str:
    port = stack.compose("port", h, "8000").strip().splitlines()[-1].rsplit(":", 1)[1]
    return f"https://127.0.0.1:{port}"


def test_hospital_apis_return_no_pixels_or_file_names(stack, run):
    for h in HOSPITALS:
        base = _hospital_url(stack, h)
        http = stack.as_service("aggregator", h, timeout=60)  # mutual TLS + the aggregator's token for h
        health = http.get(f"{base}/health")
        assert health.status_code == 200 and health.json()["service"] == f"hospital-{h.split('-')[1]}"
        summary = http.get(f"{base}/dataset")
        assert summary.status_code == 200
        body = summary.json()
        assert set(body) == {"hospital_id", "classes", "num_train", "num_val", "skipped_files", "skipped_reasons"}
        assert all(isinstance(v, int) for v in body["classes"].values())
        assert not any(s in summary.text.lower() for s in IMAGE_SUFFIXES)
        spec = http.get(f"{base}/openapi.json").json()
        assert set(spec["paths"]) == {"/health", "/dataset", "/fit", "/evaluate", "/local-baseline"}
        # a body that is not a model exchange is refused with a clear 4xx
        bad = http.post(f"{base}/fit", content=b"not safetensors")
        assert bad.status_code == 400 and "safetensors" in bad.json()["detail"]


def test_no_image_files_outside_the_mounts(run):
    """Pixels stay on the hospitals' own read-only mounts (and the held-out test set on the aggregator's)."""
    client = docker.from_env()
    containers = client.containers.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
    names = {c.labels["com.docker.compose.service"]: c for c in containers}
    assert {"aggregator", "metrics", *HOSPITALS} <= set(names)
    find = ("find / -xdev \\( -path /proc -o -path /sys -o -path /opt/venv -o -path /usr -o -path /data \\) -prune "
            "-o -type f \\( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.bmp' -o -iname '*.tif*' "
            "\\) -print")
    for service, c in names.items():
        code, out = c.exec_run(["sh", "-c", find], user="root")
        assert out.decode().strip() == "", f"{service} holds image files outside its mount: {out[:500]!r}"
    # the aggregator sees the held-out test set only, never a hospital's data
    code, out = names["aggregator"].exec_run(["sh", "-c", "ls /data"])
    assert out.decode().split() == ["test"]
    classes = set(json.loads((run.data_mounts / "manifest.json").read_text())["classes"])
    for h in HOSPITALS:
        code, out = names[h].exec_run(["ls", "/data"])
        assert code == 0 and set(out.decode().split()) <= classes  # its own class folders, nothing else
        code, out = names[h].exec_run(["ls", "/"])
        assert "test" not in out.decode().split()
