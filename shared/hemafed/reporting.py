"""Reports a run to the metrics service (the aggregator's federated runs, the centralized
baseline). Training never waits on it: a report that cannot be delivered is kept (in order) and
sent again with the next one, so a metrics outage loses nothing."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import httpx

from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_exponential

from hemafed.schemas import RoundCreate, RunCreate, RunUpdate

log = logging.getLogger("hemafed.reporting")


class MetricsReporter:
    def __init__(self, base_url: str | None, http: httpx.AsyncClient, max_pending: int = 10_000) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.http = http
        self.pending: deque[tuple[str, str, dict[str, Any]]] = deque(maxlen=max_pending)

    async def wait_ready(self, seconds: float) -> bool:
        """Wait (bounded retries) until the metrics service answers /health; False when it did not
        within ``seconds`` (reports are then kept for later) or when there is none."""
        if self.base_url is None:
            return False

        async def probe() -> bool:
            try:
                return (await self.http.get(f"{self.base_url}/health", timeout=5.0)).status_code == 200
            except httpx.HTTPError:
                return False

        retrying = AsyncRetrying(stop=stop_after_delay(seconds), wait=wait_exponential(multiplier=0.5, max=5),
                                 retry=retry_if_result(lambda ok: not ok),
                                 retry_error_callback=lambda rs: rs.outcome.result())
        ok = await retrying(probe)
        if not ok:
            log.warning("metrics service at %s not reachable after %.0fs: reports are kept for later",
                        self.base_url, seconds)
        return ok

    async def create_run(self, run: RunCreate) -> None:
        await self._send("POST", "/api/runs", run.model_dump(mode="json"))

    async def report_round(self, run_id: str, rnd: RoundCreate) -> None:
        await self._send("POST", f"/api/runs/{run_id}/rounds", rnd.model_dump(mode="json", by_alias=True))

    async def update_run(self, run_id: str, update: RunUpdate) -> None:
        await self._send("PATCH", f"/api/runs/{run_id}", update.model_dump(mode="json", exclude_none=True))

    async def flush(self) -> bool:
        """Try to deliver everything pending; True when nothing is left."""
        if self.base_url is None:
            self.pending.clear()
            return True
        while self.pending:
            method, path, body = self.pending[0]
            try:
                r = await self.http.request(method, f"{self.base_url}{path}", json=body, timeout=10.0)
            except httpx.HTTPError as exc:
                log.warning("metrics service unreachable (%s); %d report(s) kept", exc, len(self.pending))
                return False
            if r.status_code >= 500:
                log.warning("metrics service answered %d; %d report(s) kept", r.status_code, len(self.pending))
                return False
            if r.status_code >= 400 and r.status_code != 409:  # 409: run already exists (replay)
                log.error("metrics service refused %s %s: %d %s", method, path, r.status_code, r.text[:300])
            self.pending.popleft()
        return True

    async def _send(self, method: str, path: str, body: dict[str, Any]) -> None:
        self.pending.append((method, path, body))
        await self.flush()
