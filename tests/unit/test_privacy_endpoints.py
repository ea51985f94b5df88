"""Nothing but aggregate counts and metrics leaves a hospital: every route of the hospital app is
called (the routes are enumerated from the app, so a new route fails here until it has a request
below) and no answer carries pixels, the file names of the hospital's images or per-image
predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemafed.data.synthetic import CLASSES
from hemafed.exchange import CONTENT_TYPE, ModelExchange
from hemafed.schemas import EvaluateInstructions, FitConfig, FitInstructions, LocalBaselineInstructions, TaskSpec
from hemafed_hospital.app import create_app
from hemafed_hospital.settings import HospitalSettings
from tests.unit.helpers import synthetic_folder
from tests.unit.security_helpers import all_routes, authed_client, make_certs

pytestmark = pytest.mark.anyio

SIZE = 16
TASK = TaskSpec(model="cnn", image_size=SIZE, classes=list(CLASSES), seed=1)
CONFIG = FitConfig(local_epochs=1, batch_size=16, max_steps_per_epoch=1, augment=False)
#: keys that would name per-image or raw content
FORBIDDEN_KEYS = {"file", "files", "filename", "filenames", "path", "paths", "pixels", "image", "images",
                  "prediction", "predictions", "probabilities", "logits", "labels", "per_image"}
#: the largest numeric list an aggregate may hold: a confusion matrix of the 8 classes (8 x 8)
MAX_NUMBERS = len(CLASSES) ** 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return synthetic_folder(tmp_path_factory.mktemp("hospital-1"), n_per_class=7, size=24)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), hospitals=1)


@pytest.fixture(scope="module")
def initial():
    from hemafed.models import build_model, get_exchanged

    return get_exchanged(build_model("cnn", len(CLASSES), SIZE, seed=1))


def _exchange(weights, rnd: int, instructions) -> bytes:
    return ModelExchange(weights=weights, round=rnd, extra={"instructions": instructions.model_dump(mode="json")}
                         ).to_bytes()


def _requests(initial) -> dict[tuple[str, str], dict]:
    """One real, valid request per route the hospital serves."""
    octet = {"content-type": CONTENT_TYPE}
    return {
        ("GET", "/health"): {},
        ("GET", "/dataset"): {"params": {"image_size": SIZE}},
        ("POST", "/fit"): {"content": _exchange(initial, 1, FitInstructions(task=TASK, config=CONFIG)),
                           "headers": octet},
        ("POST", "/evaluate"): {"content": _exchange(initial, 1, EvaluateInstructions(task=TASK)), "headers": octet},
        ("POST", "/local-baseline"): {
            "content": _exchange(initial, 0, LocalBaselineInstructions(task=TASK, config=CONFIG, rounds=1)),
            "headers": octet},
        ("GET", "/openapi.json"): {},
        ("GET", "/docs"): {},
        ("GET", "/docs/oauth2-redirect"): {},
        ("GET", "/redoc"): {},
    }


def _numbers(value) -> int:
    if isinstance(value, list):
        return sum(_numbers(v) for v in value)
    return 1 if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _check_json(value, where: str, counts: set[int]) -> None:
    """No forbidden key, no numeric array larger than a confusion matrix, no list with one entry per image."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert str(k).lower() not in FORBIDDEN_KEYS, f"{where}: key {k!r}"
            _check_json(v, f"{where}.{k}", counts)
    elif isinstance(value, list):
        assert _numbers(value) <= MAX_NUMBERS, f"{where}: a numeric array of {_numbers(value)} values"
        assert len(value) not in counts, f"{where}: a list with one entry per image ({len(value)})"
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", counts)


async def test_no_route_returns_pixels_file_names_or_per_image_predictions(data_dir, folders, initial):
    app = create_app(HospitalSettings(hospital_id="hospital-1", data_dir=data_dir, val_fraction=0.25,
                                      secrets_dir=folders["hospital-1"]), report_resources=False)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert len(files) == 56
    names = {p.name for p in files} | {p.stem for p in files}
    requests = _requests(initial)
    served = {(m, path) for path, methods, _ in all_routes(app) for m in (methods or {"GET"}) if m != "HEAD"}
    missing = served - set(requests)
    assert not missing, f"new hospital route(s) {sorted(missing)}: add a request here and check what they return"

    async with authed_client(app, folders, "aggregator", "hospital-1", timeout=120) as c:
        summary = (await c.get("/dataset", params={"image_size": SIZE})).json()
        counts = {summary["num_train"], summary["num_val"], len(files)}
        assert summary["num_train"] + summary["num_val"] == 56
        assert len(CLASSES) not in counts  # so that the class list is not mistaken for a per-image list
        for (method, path), kwargs in sorted(requests.items()):
            r = await c.request(method, path, **kwargs)
            assert r.status_code == 200, (method, path, r.text[:300])
            where = f"{method} {path}"
            blob = r.content.decode("latin-1")
            for header, value in r.headers.items():
                assert not any(n in value for n in names), f"{where}: header {header} names an image"
            assert not any(n in blob for n in names), f"{where}: names an image file"
            assert "/tmp" not in blob and str(data_dir) not in blob, f"{where}: leaks a local path"
            ctype = r.headers["content-type"]
            if ctype.startswith("application/json"):
                if path != "/openapi.json":
                    _check_json(r.json(), where, counts)
            elif ctype == CONTENT_TYPE:
                msg = ModelExchange.from_bytes(r.content)
                # weights only: exactly the model's tensors, nothing shaped like an image batch
                assert [w.shape for w in msg.weights] == [w.shape for w in initial], where
                assert msg.aux == {}, where
                assert all(np.isscalar(v) for v in msg.metrics.values()), where
                _check_json({"metrics": msg.metrics, "extra": msg.extra, "num_examples": msg.num_examples},
                            where, counts)
                assert msg.num_examples == summary["num_train"]
            else:
                assert ctype.startswith("text/html"), (where, ctype)  # the API docs pages
                assert "<img" not in r.text.lower(), where


async def test_evaluate_answers_aggregates_only(data_dir, folders, initial):
    app = create_app(HospitalSettings(hospital_id="hospital-1", data_dir=data_dir, val_fraction=0.25,
                                      secrets_dir=folders["hospital-1"]), report_resources=False)
    async with authed_client(app, folders, "aggregator", "hospital-1", timeout=120) as c:
        r = await c.post("/evaluate", content=_exchange(initial, 2, EvaluateInstructions(task=TASK)))
    assert r.status_code == 200
    body = r.json()
    assert set(body) <= {"hospital_id", "round", "loss", "accuracy", "num_examples", "confusion_matrix", "classes",
                         "metrics"}, body.keys()
    cm = np.asarray(body["confusion_matrix"])
    assert cm.shape == (len(CLASSES), len(CLASSES)) and cm.sum() == body["num_examples"]
    assert json.dumps(body).count("[") <= len(CLASSES) + 2  # the matrix (and the class list), nothing per image
