"""The metrics service's outgoing HTTP: its one client to the aggregator, built here and only
here (TLS and authentication between services extend :func:`build_aggregator_http`), and the
proxy of ``POST /api/predict`` that uses it.

The metrics service has no TensorFlow: it forwards the uploaded image to the aggregator, which
holds the model, and answers with the aggregator's prediction or a clear error:

* 503 when no aggregator is configured (``AGGREGATOR_URL``) or the aggregator answers 503;
* 502 when the aggregator cannot be reached or answers something that is not a prediction;
* 504 when it does not answer within ``AGGREGATOR_TIMEOUT``;
* the aggregator's own 4xx (409 no finished model, 413, 415, 422) with its detail.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from hemafed import security
from hemafed.schemas import PredictionPublic
from hemafed_metrics.settings import MetricsSettings


class UpstreamError(Exception):
    """The proxied call failed; ``status`` and ``detail`` are what the client is answered."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def build_aggregator_http(settings: MetricsSettings) -> httpx.AsyncClient | None:
    """The HTTP client to the aggregator (None when ``AGGREGATOR_URL`` is not set)."""
    if not settings.aggregator_url:
        return None
    # TLS (the private CA, our client certificate) and our enrolment token for the aggregator
    return security.async_client(settings, {"aggregator": settings.aggregator_url},
                                 base_url=settings.aggregator_url,
                                 timeout=httpx.Timeout(settings.aggregator_timeout, connect=5.0))


class AggregatorProxy:
    """Forwards requests to the aggregator through one shared client."""

    def __init__(self, http: httpx.AsyncClient | None) -> None:
        self.http = http

    @classmethod
    def from_settings(cls, settings: MetricsSettings) -> AggregatorProxy:
        return cls(build_aggregator_http(settings))

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    async def predict(self, data: bytes, filename: str | None, content_type: str | None) -> PredictionPublic:
        if self.http is None:
            raise UpstreamError(503, "prediction is not available: this metrics service has no AGGREGATOR_URL")
        where = str(self.http.base_url).rstrip("/")
        files = {"file": (filename or "upload", data, content_type or "application/octet-stream")}
        try:
            r = await self.http.post("/api/predict", files=files)
        except httpx.TimeoutException as exc:
            raise UpstreamError(504, f"the aggregator at {where} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"the aggregator at {where} is unreachable ({type(exc).__name__}: {exc}); "
                                     "is the stack up?") from exc
        detail = _detail(r)
        if r.status_code == 200:
            try:
                return PredictionPublic.model_validate_json(r.content)
            except ValidationError as exc:
                raise UpstreamError(502, f"the aggregator answered something that is not a prediction: "
                                         f"{exc.errors()[0]['msg'] if exc.errors() else exc}") from exc
        if r.status_code == 503:
            raise UpstreamError(503, f"the aggregator is not ready: {detail}")
        if 400 <= r.status_code < 500:
            raise UpstreamError(r.status_code, detail)
        raise UpstreamError(502, f"the aggregator failed (HTTP {r.status_code}): {detail}")


def _detail(r: httpx.Response) -> Any:
    """The ``detail`` of a FastAPI error body, else the start of the body text."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:300] or f"HTTP {r.status_code}"
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body
