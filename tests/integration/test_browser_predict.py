"""Inference on the live stack: a real PBC JPEG through the published metrics port (the metrics
service proxies to the aggregator over TLS with its enrolment token), the /predict page in
headless Chromium, the exports of the finished run and `make classify`.

Reuses the session's synthetic run (same name and arguments as test_stack.py: no extra run). The
model was trained on synthetic cells, so the class it gives a real image is not checked for
correctness, only that it is one of the run's classes with well-formed probabilities."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import METRICS_URL, ROOT
from tests.integration.test_stack import CLIENTS, ROUNDS

RUN_ARGS = dict(clients=CLIENTS, rounds=ROUNDS, split="iid", local_epochs=2)  # == test_stack.run
RAW = ROOT.parent / "shared" / "data" / "pbc-raw-sample"


def _sample() -> Path:
    jpgs = sorted(RAW.glob("neutrophil/*.jpg")) or sorted(RAW.rglob("*.jpg"))
    if not jpgs:
        pytest.skip(f"no real JPEG under {RAW} (the shared data folder is absent)")
    return jpgs[0]


@pytest.fixture(scope="module")
def run(stack):
    return stack.up("synthetic", **RUN_ARGS)


@pytest.fixture(scope="module")
def classes(stack, run) -> list[str]:
    card = json.loads((run.results_dir / run.run_id / "model_card.json").read_text())
    return card["classes"]


def _check_prediction(body: dict, run, classes: list[str]) -> None:
    assert set(body) == {"run_id", "round", "model", "image_size", "predictions"}
    assert body["run_id"] == run.run_id
    best = json.loads((run.results_dir / run.run_id / "best.json").read_text())["best_round"]
    assert body["round"] == best and 1 <= body["round"] <= ROUNDS
    assert body["model"] == "cnn" and body["image_size"] == 32
    preds = body["predictions"]
    assert len(preds) == 3 and len({p["label"] for p in preds}) == 3
    assert all(p["label"] in classes for p in preds)
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6


def test_predict_a_real_jpeg_through_the_metrics_port(stack, run, classes):
    path = _sample()
    with httpx.Client(verify=stack.tls(), timeout=120) as http:
        r = http.post(f"{METRICS_URL}/api/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        _check_prediction(r.json(), run, classes)
        # the same image twice: the cached model gives the same answer
        again = http.post(f"{METRICS_URL}/api/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        assert again.json() == r.json()
        bad = http.post(f"{METRICS_URL}/api/predict", files={"file": ("notes.txt", b"no pixels here", "text/plain")})
        assert bad.status_code == 415 and "not an image" in bad.json()["detail"]
        cut = http.post(f"{METRICS_URL}/api/predict", files={"file": ("cut.jpg", path.read_bytes()[:2000], "image/jpeg")})
        assert cut.status_code == 422 and "corrupt or truncated" in cut.json()["detail"]


def test_the_aggregators_model_is_not_open_to_anyone(stack, run):
    """Only the metrics service (enrolled, with its token) may call the aggregator's predict route."""
    from tests.integration.conftest import AGGREGATOR_URL

    path = _sample()
    r = httpx.post(f"{AGGREGATOR_URL}/api/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                   verify=stack.tls(), timeout=60)
    assert r.status_code == 401


def test_upload_on_the_predict_page_shows_the_class(browser, stack, run, classes):
    path = _sample()
    browser.open(f"{METRICS_URL}/predict")
    browser.wait_for("document.body.dataset.state === 'idle'", timeout=30, message="the predict page loaded")
    browser.driver.find_element("id", "file").send_keys(str(path))
    browser.wait_for("['done', 'error'].includes(document.body.dataset.state)", timeout=120,
                     message="the prediction was rendered")
    assert browser.eval("document.body.dataset.state") == "done", browser.eval(
        "document.getElementById('error').textContent")
    rows = browser.js("""return Array.from(document.querySelectorAll('#predictions li')).map(li => ({
        label: li.querySelector('.label').textContent, prob: li.querySelector('.prob').textContent,
        p: +li.dataset.probability, visible: li.getBoundingClientRect().height > 0}));""")
    assert len(rows) == 3
    assert all(r["label"] in classes and r["visible"] for r in rows)
    assert [r["p"] for r in rows] == sorted((r["p"] for r in rows), reverse=True)
    assert all(r["prob"].endswith(" %") and abs(float(r["prob"][:-2]) - 100 * r["p"]) < 0.06 for r in rows)
    top = browser.eval("document.getElementById('top-class').textContent")
    assert top.startswith(rows[0]["label"] + " · ")
    assert browser.eval("document.getElementById('result-run').textContent") == run.run_id
    browser.wait_for("document.getElementById('preview').naturalWidth > 0", timeout=10,
                     message="the chosen image is shown")
    browser.screenshot("predict.png")
    browser.assert_no_errors()


def test_the_run_exported_a_saved_model_and_a_model_card(run, classes):
    out = run.results_dir / run.run_id
    assert (out / "saved_model" / "saved_model.pb").is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert card["run_id"] == run.run_id and len(classes) == 8 and card["image_size"] == 32
    assert set(card["training"]["data"]["hospitals"]) == {f"hospital-{i}" for i in range(1, CLIENTS + 1)}
    assert card["evaluation"]["test"]["accuracy"] > 0.5
    assert card["files"]["saved_model"]["endpoint"] == "serve"
    md = (out / "model_card.md").read_text()
    assert f"Run `{run.run_id}`" in md and "| **total** |" in md


def test_make_classify_writes_a_csv(stack, run, classes, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(RAW.rglob("*.jpg"))[:5]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    if len(list(images.iterdir())) < 2:
        pytest.skip(f"no real JPEGs under {RAW}")
    out = tmp_path / "preds.csv"
    proc = subprocess.run(["make", "--no-print-directory", "classify", f"RUN={run.run_id}", f"IMAGES={images}",
                           f"OUT={out}", f"RESULTS_DIR={run.results_dir}"], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(list(images.iterdir())) - 1
    assert all(r["top1_class"] in classes and float(r["top1_score"]) >= float(r["top2_score"]) for r in rows)
    assert "skipped broken.jpg: corrupt" in proc.stderr
