"""Client objects through which the server reaches hospitals. Strategies only ever see
their ``id``; the server calls ``fit`` / ``evaluate`` / ``summary``."""

from __future__ import annotations

from typing import Protocol

import httpx

from hemafed.exchange import CONTENT_TYPE, UNCHANGED_KEY, ExchangeError, ModelExchange, fill_unchanged
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

    async def fit(self, rnd: int, ins: FitIns, task: TaskSpec) -> tuple[FitRes, int]:
        msg = ModelExchange(
            weights=ins.weights,
            round=rnd,
            extra={"instructions": FitInstructions(task=task, config=ins.config, omit_unchanged=True)
                   .model_dump(mode="json"),
                   **({"run_id": self.run_id} if self.run_id else {})},
            aux=ins.aux,
        )
        r = await self.http.post(
            f"{self.base_url}/fit", content=msg.to_bytes(), headers={"content-type": CONTENT_TYPE}, timeout=None
        )
        _raise_for(r)
        try:
            reply = ModelExchange.from_bytes(r.content)
        except ExchangeError as exc:
            raise HospitalError("rejected", f"unusable update: {exc}") from exc
        if reply.round != rnd:
            raise HospitalError("rejected", f"update is for round {reply.round}, not the current round {rnd}")
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
        msg = ModelExchange(
            weights=weights, round=rnd,
            extra={"instructions": EvaluateInstructions(task=task).model_dump(mode="json")},
        )
        r = await self.http.post(
            f"{self.base_url}/evaluate", content=msg.to_bytes(), headers={"content-type": CONTENT_TYPE},
            timeout=None,
        )
        _raise_for(r)
        ev = EvaluatePublic.model_validate(r.json())
        return EvaluateRes(hospital_id=self._id, loss=ev.loss, accuracy=ev.accuracy, num_examples=ev.num_examples)


    async def local_baseline(self, rnd: int, weights: Weights, task: TaskSpec, config: FitConfig,
                             rounds: int, timeout: float | None = None,
                             learning_rates: list[float] | None = None) -> FitRes:
        """Ask the hospital for a purely local model trained from ``weights`` (``POST /local-baseline``)."""
        msg = ModelExchange(
            weights=weights, round=rnd,
            extra={"instructions": LocalBaselineInstructions(task=task, config=config, rounds=rounds,
                                                             learning_rates=learning_rates or [])
                   .model_dump(mode="json")},
        )
        r = await self.http.post(f"{self.base_url}/local-baseline", content=msg.to_bytes(),
                                 headers={"content-type": CONTENT_TYPE}, timeout=timeout)
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
