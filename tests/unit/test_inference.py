"""``POST /api/predict`` on the aggregator (through an ASGI transport, its real lifespan) and the
whole chain through the metrics service's proxy: the best model of a finished run answers the
top-3 classes; every refusal is a clear 4xx."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from hemafed.data.imagefiles import decode_rgb
from hemafed.schemas import TaskSpec
from hemafed_aggregator import modelops
from hemafed_aggregator.app import create_app
from hemafed_aggregator.inference import RunModel, decode_upload, top_k
from hemafed_aggregator.settings import AggregatorSettings, RunConfig
from hemafed_metrics.app import create_app as metrics_app
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import InMemoryStore
from hemafed_metrics.upstream import AggregatorProxy

pytestmark = pytest.mark.anyio

RUN_ID = "inf-run"
CLASSES = ["basophil", "eosinophil", "lymphocyte", "neutrophil"]
SIZE = 16
BEST_ROUND = 2


def _png(size=(40, 30), mode="RGB", color=(200, 80, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode != "L" else 128).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved_best(tmp_path_factory) -> Path:
    """A finished run's results folder: best.keras + best.json exactly as server._finish writes them."""
    out = tmp_path_factory.mktemp("results")
    task = TaskSpec(model="cnn", image_size=SIZE, classes=CLASSES, seed=3)
    weights, _ = modelops.initial_weights(task)
    modelops.save_keras(task, weights, out / RUN_ID / "best.keras",
                        {"run_id": RUN_ID, "best_round": BEST_ROUND, "rounds": 3, "kind": "best"})
    return out


def _app(results: Path, **settings):
    s = AggregatorSettings(hospitals={"hospital-1": "http://hospital-1"}, output_dir=results, auto_start=False,
                           **settings)
    return create_app(s, RunConfig(run_id=RUN_ID, rounds=3), report_resources=False)


def _finish(app) -> None:
    st = app.state.server.state
    st.status, st.round, st.best_round = "finished", 3, BEST_ROUND


async def _post(app, files=None, data=None, content=None, headers=None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aggregator") as c:
        return await c.post("/api/predict", files=files, data=data, content=content, headers=headers)


@pytest.fixture
async def finished(saved_best):
    app = _app(saved_best)
    async with app.router.lifespan_context(app):
        _finish(app)
        yield app


# --------------------------------------------------------------------------- answers


async def test_prediction_is_the_best_models_top3(finished, saved_best):
    image = _jpeg(seed=1)
    r = await _post(finished, files={"file": ("cell.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"run_id", "round", "model", "image_size", "predictions"}
    assert body["run_id"] == RUN_ID and body["round"] == BEST_ROUND
    assert body["model"] == "cnn" and body["image_size"] == SIZE
    preds = body["predictions"]
    assert len(preds) == 3
    assert all(set(p) == {"label", "probability"} for p in preds)
    labels = [p["label"] for p in preds]
    probs = [p["probability"] for p in preds]
    assert len(set(labels)) == 3 and set(labels) <= set(CLASSES)
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-6
    # the very probabilities of the saved model on the image decoded as in training
    model = RunModel.load(saved_best / RUN_ID / "best.keras")
    expected = model.probabilities(decode_rgb(io.BytesIO(image), SIZE)[None])[0]
    for label, p in zip(labels, probs):
        assert p == pytest.approx(expected[CLASSES.index(label)], abs=1e-6)
    assert set(labels) == {CLASSES[i] for i in np.argsort(-expected)[:3]}


async def test_the_model_is_loaded_once_and_reloaded_when_the_file_changes(finished, saved_best):
    for mode, payload in (("RGBA", _png(mode="RGBA", color=(10, 20, 30, 0))), ("L", _png(mode="L"))):
        r = await _post(finished, files={"file": (f"{mode}.png", payload, "image/png")})
        assert r.status_code == 200, (mode, r.text)  # any image mode is converted to RGB
    cached = finished.state.predictor._cached
    assert cached is not None and cached.path == saved_best / RUN_ID / "best.keras"
    r = await _post(finished, files={"file": ("x.png", _png(), "image/png")})
    assert r.status_code == 200 and finished.state.predictor._cached is cached
    path = saved_best / RUN_ID / "best.keras"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new model file
    r = await _post(finished, files={"file": ("x.png", _png(), "image/png")})
    assert r.status_code == 200 and finished.state.predictor._cached is not cached


def test_top_k_orders_and_clips():
    assert top_k(np.array([0.1, 0.5, 0.2, 0.5]), 3) == [(1, 0.5), (3, 0.5), (2, 0.2)]
    assert top_k(np.array([1.0000001, 0.0]), 1) == [(0, 1.0)]
    assert top_k(np.array([0.3, 0.7]), 5) == [(1, 0.7), (0, 0.3)]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("status,message", [("running", "no finished model yet: run inf-run is running"),
                                            ("evaluating", "is evaluating"),
                                            ("failed", "run inf-run failed (boom)")])
async def test_409_while_no_finished_model(saved_best, status, message):
    app = _app(saved_best)
    async with app.router.lifespan_context(app):
        st = app.state.server.state
        st.status, st.round, st.message = status, 2, "boom"
        r = await _post(app, files={"file": ("cell.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 409
    assert message in r.json()["detail"]


async def test_409_when_the_finished_runs_model_file_is_missing(tmp_path):
    app = _app(tmp_path)
    async with app.router.lifespan_context(app):
        _finish(app)
        r = await _post(app, files={"file": ("cell.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 409
    assert r.json() == {"detail": "run inf-run finished but its best model best.keras is missing from the "
                                  "results folder"}


async def test_503_before_the_server_exists(saved_best):
    app = _app(saved_best)  # lifespan not run: no server yet
    r = await _post(app, files={"file": ("cell.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 503 and r.json() == {"detail": "the aggregator is starting"}


async def test_415_for_a_file_that_is_not_an_image(finished):
    r = await _post(finished, files={"file": ("notes.txt", b"hello, not pixels", "text/plain")})
    assert r.status_code == 415
    assert "not an image" in r.json()["detail"]
    r = await _post(finished, files={"file": ("fake.jpg", b"%PDF-1.4 not a jpeg at all", "image/jpeg")})
    assert r.status_code == 415  # the bytes decide, not the name or the declared type


async def test_422_for_empty_truncated_or_missing_files(finished):
    r = await _post(finished, files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert r.status_code == 422 and r.json() == {"detail": "the uploaded file is empty"}
    whole = _jpeg(seed=2, size=64)
    for cut in (whole[:400], whole[: len(whole) * 2 // 3]):  # inside the header / inside the pixel data
        r = await _post(finished, files={"file": ("cut.jpg", cut, "image/jpeg")})
        assert r.status_code == 422
        assert r.json()["detail"].startswith("the image is corrupt or truncated (OSError: ")
    r = await _post(finished, data={"other": "x"})  # no `file` field
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "file"]


async def test_413_for_oversized_files_and_images(saved_best):
    app = _app(saved_best, predict_max_bytes=3000, predict_max_pixels=50 * 50, max_body_bytes=20_000)
    async with app.router.lifespan_context(app):
        _finish(app)
        big = _jpeg(seed=3, size=96)
        assert 3000 < len(big) < 20_000
        r = await _post(app, files={"file": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413
        assert r.json() == {"detail": "the file is larger than the limit of 3000 bytes"}
        r = await _post(app, files={"file": ("wide.png", _png(size=(60, 50)), "image/png")})
        assert r.status_code == 413
        assert r.json() == {"detail": "the image has 60 x 50 pixels; the limit is 2500 pixels"}
        r = await _post(app, files={"file": ("huge.jpg", b"\xff" * 30_000, "image/jpeg")})
        assert r.status_code == 413  # the body limit, before anything is parsed
        assert r.json() == {"detail": "request body exceeds the limit of 20000 bytes"}
        r = await _post(app, files={"file": ("ok.png", _png(size=(50, 50)), "image/png")})
        assert r.status_code == 200


def test_decode_upload_resizes_like_training():
    img = decode_upload(_png(size=(40, 30)), SIZE, 10_000)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (200, 80, 120)


# --------------------------------------------------------------------------- through the metrics proxy


async def test_the_metrics_proxy_answers_with_the_aggregators_prediction(finished):
    store = InMemoryStore()
    app = metrics_app(MetricsSettings(db_path=":memory:", sample_interval=0, aggregator_url="http://aggregator"),
                      store=store)
    app.state.aggregator = AggregatorProxy(httpx.AsyncClient(transport=httpx.ASGITransport(app=finished),
                                                             base_url="http://aggregator"))
    image = _jpeg(seed=5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics") as c:
        via_proxy = await c.post("/api/predict", files={"file": ("cell.jpg", image, "image/jpeg")})
        refused = await c.post("/api/predict", files={"file": ("a.txt", b"text", "text/plain")})
    direct = await _post(finished, files={"file": ("cell.jpg", image, "image/jpeg")})
    assert via_proxy.status_code == 200 and direct.status_code == 200
    assert via_proxy.json() == direct.json()
    assert refused.status_code == 415 and "not an image" in refused.json()["detail"]
    await app.state.aggregator.aclose()


def test_predictions_schema_has_no_unexpected_fields():
    from hemafed.schemas import PredictionPublic

    assert set(PredictionPublic.model_fields) == {"run_id", "round", "model", "image_size", "predictions"}
    assert json.loads(PredictionPublic(run_id="r", round=1, model="cnn", image_size=16,
                                       predictions=[]).model_dump_json())["predictions"] == []
