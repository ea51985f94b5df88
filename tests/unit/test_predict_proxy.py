"""The metrics service's ``POST /api/predict`` proxy against a fake aggregator (httpx
MockTransport) and the ``/predict`` page: pass-through, the aggregator's refusals with their
detail, and 502/503/504 when the aggregator is missing, down, slow or answers badly."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from hemafed_metrics.app import create_app
from hemafed_metrics.settings import MetricsSettings
from hemafed_metrics.store import InMemoryStore
from hemafed_metrics.upstream import AggregatorProxy, build_aggregator_http

pytestmark = pytest.mark.anyio

PREDICTION = {"run_id": "run-7", "round": 4, "model": "cnn", "image_size": 32,
              "predictions": [{"label": "neutrophil", "probability": 0.7},
                              {"label": "monocyte", "probability": 0.2},
                              {"label": "basophil", "probability": 0.05}]}
IMAGE = b"\xff\xd8\xff\xe0 pretend jpeg bytes"


def _app(handler=None, *, url: str | None = "http://aggregator:8080", max_body: int = 2 * 1024 * 1024):
    app = create_app(MetricsSettings(db_path=":memory:", sample_interval=0, aggregator_url=url,
                                     max_body_bytes=max_body), store=InMemoryStore())
    if handler is not None:
        app.state.aggregator = AggregatorProxy(httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                                                 base_url=url))
    return app


async def _call(app, method="POST", path="/api/predict", **kw) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metrics") as c:
        return await c.request(method, path, **kw)


def _upload(name="cell.jpg", data=IMAGE, ctype="image/jpeg"):
    return {"files": {"file": (name, data, ctype)}}


async def test_a_prediction_passes_through_with_the_uploaded_file():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=PREDICTION)

    r = await _call(_app(handler), **_upload())
    assert r.status_code == 200
    assert r.json() == PREDICTION
    [req] = seen
    assert req.method == "POST" and str(req.url) == "http://aggregator:8080/api/predict"
    body = req.read()
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="cell.jpg"' in body and b"Content-Type: image/jpeg" in body
    assert IMAGE in body


@pytest.mark.parametrize("status,detail", [
    (409, "no finished model yet: run r is running (round 1 of 3); try again when it has finished"),
    (413, "the file is larger than the limit of 2097152 bytes"),
    (415, "the file is not an image HemaFed can read (JPEG, PNG, BMP or TIFF expected)"),
    (422, "the image is corrupt or truncated (OSError: Truncated File Read)"),
])
async def test_the_aggregators_refusals_pass_through_with_their_detail(status, detail):
    r = await _call(_app(lambda req: httpx.Response(status, json={"detail": detail})), **_upload())
    assert r.status_code == status
    assert r.json() == {"detail": detail}


async def test_a_validation_error_list_passes_through():
    detail = [{"type": "missing", "loc": ["body", "file"], "msg": "Field required"}]
    r = await _call(_app(lambda req: httpx.Response(422, json={"detail": detail})), **_upload())
    assert r.status_code == 422 and r.json() == {"detail": detail}


async def test_502_when_the_aggregator_is_down():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    r = await _call(_app(refuse), **_upload())
    assert r.status_code == 502
    assert r.json() == {"detail": "the aggregator at http://aggregator:8080 is unreachable (ConnectError: "
                                  "[Errno 111] Connection refused); is the stack up?"}


async def test_504_when_the_aggregator_does_not_answer_in_time():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    r = await _call(_app(slow), **_upload())
    assert r.status_code == 504
    assert r.json() == {"detail": "the aggregator at http://aggregator:8080 did not answer in time (ReadTimeout)"}


async def test_503_when_the_aggregator_is_starting_or_not_configured():
    r = await _call(_app(lambda req: httpx.Response(503, json={"detail": "the aggregator is starting"})),
                    **_upload())
    assert r.status_code == 503
    assert r.json() == {"detail": "the aggregator is not ready: the aggregator is starting"}
    r = await _call(_app(url=None), **_upload())
    assert r.status_code == 503
    assert r.json() == {"detail": "prediction is not available: this metrics service has no AGGREGATOR_URL"}


@pytest.mark.parametrize("response,detail", [
    (httpx.Response(500, text="Internal Server Error"), "the aggregator failed (HTTP 500): Internal Server Error"),
    (httpx.Response(200, json={"run_id": "x"}), "the aggregator answered something that is not a prediction: "
                                                "Field required"),
    (httpx.Response(200, text="<html>proxy page</html>"), "the aggregator answered something that is not a "
                                                          "prediction: Invalid JSON"),
])
async def test_502_when_the_aggregator_answers_badly(response, detail):
    r = await _call(_app(lambda req: response), **_upload())
    assert r.status_code == 502
    assert r.json()["detail"].startswith(detail)


async def test_refused_before_the_aggregator_is_asked():
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=PREDICTION)

    r = await _call(_app(handler), data={"not_file": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
    r = await _call(_app(handler, max_body=1000), **_upload(data=b"x" * 2000))
    assert r.status_code == 413
    assert r.json() == {"detail": "request body exceeds the limit of 1000 bytes"}
    assert calls == []


def test_the_client_is_built_once_from_the_settings():
    assert build_aggregator_http(MetricsSettings(db_path=":memory:")) is None
    http = build_aggregator_http(MetricsSettings(db_path=":memory:", aggregator_url="http://aggregator:8080",
                                                 aggregator_timeout=7))
    assert str(http.base_url) == "http://aggregator:8080"
    assert http.timeout.read == 7 and http.timeout.connect == 5


async def test_the_predict_page_and_its_script_are_served_locally():
    app = _app(url=None)
    page = await _call(app, "GET", "/predict")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for needle in ('id="file"', 'name="file"', 'id="predictions"', 'id="result-run"', 'id="result-round"',
                   'id="error"', '<script src="/static/predict.js">'):
        assert needle in html, needle
    assert not re.search(r'(src|href)="(https?:)?//', html)  # every asset from this service: no CDN
    js = await _call(app, "GET", "/static/predict.js")
    assert js.status_code == 200 and "/api/predict" in js.text and "https://" not in js.text


def test_the_metrics_service_never_imports_tensorflow():
    code = ("import sys, hemafed_metrics.app, hemafed_metrics.routes.predict, hemafed_metrics.upstream; "
            "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
