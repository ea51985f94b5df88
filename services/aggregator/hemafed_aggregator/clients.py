"""Client objects through which the server reaches hospitals. Strategies only ever see
their ``id``; the server calls ``fit`` / ``evaluate`` / ``summary``."""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import numpy as np

from hemafed.exchange import (
    ACCEPTS_KEY,
    CONTENT_TYPE,
    HELD_KEY,
    UNCHANGED_KEY,
    ExchangeError,
    ModelExchange,
    fill_unchanged,
    refer_to_held,
    tensor_digest,
)
from hemafed.schemas import (
    DatasetSummaryPublic,
    EvaluateInstructions,
    EvaluatePublic,
    FitConfig,
    FitInstructions,
    LocalBaselineInstructions,
    TaskSpec,
)

from hemafed_aggregator.strategies.base import EvaluateRes, FitIns, FitRes, Weights


class HospitalError(Exception):
    """A hospital answered with an error or an unusable message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status  # error / rejected
        self.message = message


class HospitalClient(Protocol):
    @property
    def id(self) -> str: ...

    async def health(self) -> bool: ...

    async def summary(self, image_size: int) -> DatasetSummaryPublic: ...

    async def fit(self, rnd: int, ins: FitIns, task: TaskSpec) -> tuple[FitRes, int]:
        """Returns the result and the size in bytes of the update received."""

    async def evaluate(self, rnd: int, weights: Weights, task: TaskSpec) -> EvaluateRes: ...


class HttpHospitalClient:
    """Talks to one hospital agent over HTTP(S). ``http`` is an injected ``httpx.AsyncClient``
    (its transport may be an ASGI app in tests)."""

    def __init__(self, hospital_id: str, base_url: str, http: httpx.AsyncClient, run_id: str | None = None) -> None:
        self._id = hospital_id
        #: named in every /fit so that the hospital can answer a repeat from memory and refuse an
        #: older round of the same run (hemafed_hospital.replay, RELIABILITY.md)
        self.run_id = run_id
        self.base_url = base_url.rstrip("/")
        self.http = http
        #: digests of the tensors the hospital holds (the weights of the last request it answered):
        #: a request leaves those out and names them (hemafed.exchange.refer_to_held)
        self.held: frozenset[str] = frozenset()
        #: whether the hospital accepts such references (its /fit replies say so; older ones do not)
        self.accepts_held = False
        #: bytes of the last request's body (what went down to the hospital)
        self.last_request_bytes = 0

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"HttpHospitalClient({self._id!r}, {self.base_url!r})"

    async def health(self) -> bool:
        try:
            r = await self.http.get(f"{self.base_url}/health", timeout=5.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def summary(self, image_size: int) -> DatasetSummaryPublic:
        r = await self.http.get(f"{self.base_url}/dataset", params={"image_size": image_size}, timeout=600.0)
        _raise_for(r)
        return DatasetSummaryPublic.model_validate(r.json())

    async def _post_weights(self, path: str, weights: Weights, rnd: int, extra: dict[str, Any], *,
                            aux: dict[str, list[np.ndarray]] | None = None,
                            timeout: float | None = None) -> httpx.Response:
        """POST a model exchange carrying ``weights``, leaving out the tensors the hospital holds; a
        412 (it does not hold them: restarted, or it missed a request) is answered by sending the
        request whole, once. Afterwards the hospital holds ``weights`` (any other answer: unknown,
        so the next request goes whole)."""
        digests = [tensor_digest(w) for w in weights]
        held = self.held if self.accepts_held else frozenset()
        self.held = frozenset()  # until the hospital answers (a request that fails or is cancelled: unknown)
        while True:
            carried, refs = refer_to_held(weights, held, digests)
            msg = ModelExchange(weights=carried, round=rnd, extra={**extra, **({HELD_KEY: refs} if refs else {})},
                                aux=aux or {})
            body = msg.to_bytes()
            r = await self.http.post(f"{self.base_url}{path}", content=body, headers={"content-type": CONTENT_TYPE},
                                     timeout=timeout)
            self.last_request_bytes = len(body)
            if r.status_code == 412 and refs:
                held = frozenset()
                continue
            self.held = frozenset(digests) if r.status_code < 400 else frozenset()
            return r

    async def fit(self, rnd: int, ins: FitIns, task: TaskSpec) -> tuple[FitRes, int]:
        r = await self._post_weights(
            "/fit", ins.weights, rnd,
            {"instructions": FitInstructions(task=task, config=ins.config, omit_unchanged=True)
             .model_dump(mode="json"), **({"run_id": self.run_id} if self.run_id else {})},
            aux=ins.aux)
        _raise_for(r)
        try:
            reply = ModelExchange.from_bytes(r.content)
        except ExchangeError as exc:
            raise HospitalError("rejected", f"unusable update: {exc}") from exc
        if reply.round != rnd:
            raise HospitalError("rejected", f"update is for round {reply.round}, not the current round {rnd}")
        accepts = reply.extra.get(ACCEPTS_KEY)
        self.accepts_held = isinstance(accepts, list) and HELD_KEY in accepts
        try:  # the tensors the hospital sent back unchanged are left out of its reply: put back what was sent
            weights = fill_unchanged(ins.weights, reply.weights, reply.extra.get(UNCHANGED_KEY))
        except ExchangeError as exc:
            raise HospitalError("rejected", f"unusable update: {exc}") from exc
        res = FitRes(
            hospital_id=self._id, weights=weights, num_examples=reply.num_examples,
            metrics=reply.metrics, aux=reply.aux,
        )
        return res, len(r.content)

    async def evaluate(self, rnd: int, weights: Weights, task: TaskSpec) -> EvaluateRes:
        r = await self._post_weights("/evaluate", weights, rnd,
                                     {"instructions": EvaluateInstructions(task=task).model_dump(mode="json")})
        _raise_for(r)
        ev = EvaluatePublic.model_validate(r.json())
        return EvaluateRes(hospital_id=self._id, loss=ev.loss, accuracy=ev.accuracy, num_examples=ev.num_examples)


    async def local_baseline(self, rnd: int, weights: Weights, task: TaskSpec, config: FitConfig,
                             rounds: int, timeout: float | None = None,
                             learning_rates: list[float] | None = None) -> FitRes:
        """Ask the hospital for a purely local model trained from ``weights`` (``POST /local-baseline``)."""
        r = await self._post_weights(
            "/local-baseline", weights, rnd,
            {"instructions": LocalBaselineInstructions(task=task, config=config, rounds=rounds,
                                                       learning_rates=learning_rates or []).model_dump(mode="json")},
            timeout=timeout)
        _raise_for(r)
        try:
            reply = ModelExchange.from_bytes(r.content)
        except ExchangeError as exc:
            raise HospitalError("rejected", f"unusable local model: {exc}") from exc
        return FitRes(hospital_id=self._id, weights=reply.weights, num_examples=reply.num_examples,
                      metrics=reply.metrics)

def _raise_for(r: httpx.Response) -> None:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise HospitalError("error", f"HTTP {r.status_code}: {str(detail)[:500]}")
