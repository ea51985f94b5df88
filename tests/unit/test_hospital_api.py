"""The hospital agent's API in process (ASGI transport): every endpoint, field and refusal."""

from __future__ import annotations

import numpy as np
import pytest
import httpx

from hemafed.data.synthetic import CLASSES
from hemafed.exchange import ModelExchange
from hemafed.schemas import EvaluateInstructions, FitConfig, FitInstructions, TaskSpec
from hemafed_hospital.app import create_app
from hemafed_hospital.settings import HospitalSettings
from tests.unit.helpers import synthetic_folder

pytestmark = pytest.mark.anyio
TASK = TaskSpec(model="cnn", image_size=32, classes=list(CLASSES), seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return synthetic_folder(tmp_path_factory.mktemp("hospital-1"), n_per_class=5, size=40)


@pytest.fixture(scope="module")
def initial():
    from hemafed.models import build_model, get_exchanged

    return get_exchanged(build_model("cnn", len(CLASSES), 32, seed=3))


@pytest.fixture
def app(data_dir):
    return create_app(HospitalSettings(hospital_id="hospital-1", data_dir=data_dir, max_body_bytes=8_000_000),
                      report_resources=False)


@pytest.fixture
async def client(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hospital-1") as c:
        yield c


def fit_body(weights, rnd=1, config=None, task=TASK) -> bytes:
    ins = FitInstructions(task=task, config=config or FitConfig(local_epochs=1, batch_size=16))
    return ModelExchange(weights=weights, round=rnd, extra={"instructions": ins.model_dump(mode="json")}).to_bytes()


async def test_health(client):
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "service": "hospital-1", "version": "0.1.0"}


async def test_dataset_summary_is_counts_only(client):
    r = await client.get("/dataset", params={"image_size": 32})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"hospital_id", "classes", "num_train", "num_val", "skipped_files", "skipped_reasons"}
    assert body["hospital_id"] == "hospital-1"
    assert body["classes"] == {c: 5 for c in CLASSES}
    assert body["num_train"] + body["num_val"] == 40
    assert body["num_val"] >= 8  # stratified: at least one per class
    assert body["skipped_files"] == 0 and body["skipped_reasons"] == {}
    assert ".png" not in r.text


async def test_fit_returns_a_trained_update(client, initial):
    r = await client.post("/fit", content=fit_body(initial, rnd=4))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    msg = ModelExchange.from_bytes(r.content)
    assert msg.round == 4
    assert msg.num_examples == 32  # 40 images less 8 held out for local validation
    assert set(msg.metrics) == {"train_loss", "train_accuracy", "fit_seconds", "steps", "local_val_accuracy",
                                "local_val_loss"}
    assert msg.metrics["steps"] == 2  # 32 images / batch 16, one epoch
    assert msg.metrics["train_loss"] > 0 and msg.metrics["fit_seconds"] > 0
    assert msg.extra == {"hospital_id": "hospital-1", "accepts": ["held"]}  # later requests may refer to what it holds
    assert [w.shape for w in msg.weights] == [w.shape for w in initial]
    assert any(not np.array_equal(a, b) for a, b in zip(msg.weights, initial))


async def test_evaluate_returns_metrics_and_confusion(client, initial):
    ins = EvaluateInstructions(task=TASK).model_dump(mode="json")
    body = ModelExchange(weights=initial, round=2, extra={"instructions": ins}).to_bytes()
    r = await client.post("/evaluate", content=body)
    assert r.status_code == 200, r.text
    ev = r.json()
    assert set(ev) == {"round", "hospital_id", "loss", "accuracy", "num_examples", "classes", "confusion_matrix"}
    assert ev["round"] == 2 and ev["hospital_id"] == "hospital-1"
    assert ev["num_examples"] == 8 and ev["classes"] == list(CLASSES)
    assert np.array(ev["confusion_matrix"]).sum() == 8
    assert np.array(ev["confusion_matrix"]).sum(axis=1).tolist() == [1] * 8
    assert 0 <= ev["accuracy"] <= 1 and ev["loss"] > 0


async def test_malformed_body_is_400(client):
    r = await client.post("/fit", content=b"\x00" * 64)
    assert r.status_code == 400
    assert "safetensors" in r.json()["detail"] or "out of range" in r.json()["detail"]


async def test_wrong_shape_is_422_naming_the_tensor(client, initial):
    bad = [w.copy() for w in initial]
    bad[0] = np.zeros((1, 1, 3, 7), np.float32)
    r = await client.post("/fit", content=fit_body(bad))
    assert r.status_code == 422
    assert "tensor 0: shape (1, 1, 3, 7)" in r.json()["detail"]


async def test_nan_weights_are_422(client, initial):
    bad = [w.copy() for w in initial]
    bad[-1][0] = np.nan
    r = await client.post("/fit", content=fit_body(bad))
    assert r.status_code == 422
    assert "NaN" in r.json()["detail"]


async def test_missing_or_bad_instructions_are_422(client, initial):
    r = await client.post("/fit", content=ModelExchange(weights=initial, round=1).to_bytes())
    assert r.status_code == 422 and "bad instructions" in r.json()["detail"]
    ins = FitInstructions(task=TASK, config=FitConfig()).model_dump(mode="json")
    ins["config"]["local_epochs"] = 0
    r = await client.post("/fit", content=ModelExchange(weights=initial, round=1,
                                                        extra={"instructions": ins}).to_bytes())
    assert r.status_code == 422 and "local_epochs" in r.json()["detail"]


async def test_oversized_body_is_413(client):
    r = await client.post("/fit", content=b"x" * 8_000_001)
    assert r.status_code == 413
    assert "exceeds the limit of 8000000 bytes" in r.json()["detail"]


async def test_busy_hospital_answers_409(app, client, initial):
    app.state.agent._busy.acquire()
    try:
        r = await client.post("/fit", content=fit_body(initial))
    finally:
        app.state.agent._busy.release()
    assert r.status_code == 409 and "already running" in r.json()["detail"]


async def test_unknown_classes_only_is_409(client, initial):
    task = TaskSpec(model="cnn", image_size=32, classes=["blast", "other"], seed=3)
    from hemafed.models import build_model, get_exchanged

    weights = get_exchanged(build_model("cnn", 2, 32, seed=3))
    r = await client.post("/fit", content=fit_body(weights, task=task))
    assert r.status_code == 409 and "class list" in r.json()["detail"]


async def test_missing_data_dir_is_503(tmp_path, initial):
    app = create_app(HospitalSettings(hospital_id="h9", data_dir=tmp_path / "absent"), report_resources=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h9") as c:
        r = await c.get("/dataset")
    assert r.status_code == 503 and "not mounted" in r.json()["detail"]
