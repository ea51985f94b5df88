"""Fewer than MIN_CLIENTS hospitals (RELIABILITY.md): the run waits with a clear status, runs the
round again when enough are back, and fails cleanly (never hangs) when they are not."""

from __future__ import annotations

import asyncio

import pytest

from hemafed_metrics.store import InMemoryStore
from tests.unit.fakes import FakeHospital, make_server, patch_modelops

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_tensorflow(monkeypatch):
    patch_modelops(monkeypatch)


class Watcher:
    """Records the server's (status, message) each time a hospital is probed (a health probe is in
    flight then: the window in which a status read once saw ``waiting_for_clients`` with an empty message)."""

    def __init__(self) -> None:
        self.server = None
        self.seen: list[tuple[str, str]] = []

    def record(self) -> None:
        if self.server is not None:
            self.seen.append((self.server.state.status, self.server.state.message))

    def alive(self, answer):
        def probe(n: int) -> bool:
            self.record()
            return answer(n)
        return probe

    def waiting_messages(self) -> list[str]:
        return [m for s, m in self.seen if s == "waiting_for_clients"]


class WatchedHospital(FakeHospital):
    """A fake hospital that also records the server's (status, message) at each fit it is asked for."""

    def __init__(self, hid: str, watcher: Watcher, **kw) -> None:
        super().__init__(hid, **kw)
        self.watcher = watcher

    async def fit(self, rnd, ins, task):
        self.watcher.record()
        return await super().fit(rnd, ins, task)


async def test_a_round_below_min_clients_waits_then_runs_again_when_a_hospital_is_back(tmp_path):
    w = Watcher()
    store = InMemoryStore()
    # round 2: hospitals 2 and 3 fail their fit once, then their health for a probe or two
    hs = [WatchedHospital("hospital-1", w), FakeHospital("hospital-2", dead_rounds={2}, dead_attempts=1,
                                                         alive=w.alive(lambda n: n == 1 or n >= 3)),
          FakeHospital("hospital-3", dead_rounds={2}, dead_attempts=1, alive=w.alive(lambda n: n == 1 or n >= 4))]
    server = make_server(tmp_path, hs, store=store, strategy="fedavg", fraction_fit=1.0, rounds=3,
                         wait_for_clients=20)
    w.server = server
    state = await asyncio.wait_for(server.run(), 60)
    assert state.status == "finished", state.message
    assert w.waiting_messages() and all(m.endswith("healthy, need 2") for m in w.waiting_messages())
    waiting = [m for m in w.waiting_messages() if "round 2" in m]
    assert waiting and "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2" in waiting[0]
    assert waiting[0].endswith("; 1/3 healthy, need 2")
    assert hs[0].fits == [1, 2, 2, 3]  # round 2 ran twice: the first attempt was not aggregated
    failed = "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2"
    # hospital-1's fits of rounds 1 and 2, plain; the wait's first probe (of hospitals 2 and 3, in
    # flight) says why the round stopped; round 2 again says why it runs again; round 3 plain again
    assert [x for x in w.seen if x[0] == "running"] == [
        ("running", ""), ("running", ""),
        *[("running", f"{failed}; checking which hospitals are healthy")] * 2,
        ("running", f"round 2 again (retry 1/2) after: {failed}"),
        ("running", "")]
    assert state.message == ""
    rounds = store.list_rounds("ck")
    assert [r.round for r in rounds] == [1, 2, 3]
    assert {h: m.status for h, m in rounds[1].hospitals.items()} == {
        "hospital-1": "ok", "hospital-2": "ok", "hospital-3": "ok"}
    # the failed attempt is on record with the round that was finally aggregated
    assert rounds[1].report["failed_attempts"] == [{
        "message": "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2",
        "hospitals": {"hospital-1": {"status": "ok", "message": ""},
                      "hospital-2": {"status": "error", "message": "connection refused (container gone)"},
                      "hospital-3": {"status": "error", "message": "connection refused (container gone)"}}}]
    assert "failed_attempts" not in rounds[0].report and "failed_attempts" not in rounds[2].report


async def test_hospitals_that_never_come_back_fail_the_run_after_wait_for_clients(tmp_path):
    w = Watcher()
    store = InMemoryStore()
    hs = [FakeHospital("hospital-1"), FakeHospital("hospital-2", dead_rounds={2, 3}, alive=w.alive(lambda n: n == 1)),
          FakeHospital("hospital-3", dead_rounds={2, 3}, alive=w.alive(lambda n: n == 1))]
    server = make_server(tmp_path, hs, store=store, strategy="fedavg", fraction_fit=1.0, rounds=3,
                         wait_for_clients=1.0)
    w.server = server
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    state = await asyncio.wait_for(server.run(), 30)
    elapsed = loop.time() - t0
    assert state.status == "failed"
    assert state.message == ("round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2; only 1 of 3 hospitals "
                             "healthy after waiting 1s (WAIT_FOR_CLIENTS); MIN_CLIENTS is 2")
    assert 1.0 <= elapsed < 10
    assert ("waiting_for_clients",
            "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2; 1/3 healthy, need 2") in w.seen
    # while the wait's first probe is in flight the status is still running, with the round's failure
    assert ("running", "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2; checking which hospitals "
                       "are healthy") in w.seen
    assert ("running", "") not in w.seen
    # never the waiting status with a stale message, not even during the first probe of the wait
    assert set(w.waiting_messages()) == {
        "round 2: only 1 hospital(s) answered; MIN_CLIENTS is 2; 1/3 healthy, need 2"}
    run = store.get_run("ck")
    assert run.status.value == "failed" and run.message == state.message
    assert [r.round for r in store.list_rounds("ck")] == [1]
    assert state.hospitals["hospital-2"].status == "unreachable"


async def test_healthy_hospitals_that_keep_failing_give_up_after_round_retries(tmp_path):
    hs = [FakeHospital("hospital-1"), FakeHospital("hospital-2", dead_rounds={1}),
          FakeHospital("hospital-3", dead_rounds={1})]
    server = make_server(tmp_path, hs, strategy="fedavg", fraction_fit=1.0, rounds=2, round_retries=2)
    state = await asyncio.wait_for(server.run(), 30)
    assert state.status == "failed"
    assert state.message == "round 1: only 1 hospital(s) answered; MIN_CLIENTS is 2; gave up after 2 retries (ROUND_RETRIES)"
    assert hs[0].fits == [1, 1, 1]


async def test_the_start_waits_with_a_clear_status_and_fails_cleanly(tmp_path):
    w = Watcher()
    hs = [FakeHospital("hospital-1"), FakeHospital("hospital-2", alive=w.alive(lambda n: False)),
          FakeHospital("hospital-3", alive=False)]
    server = make_server(tmp_path, hs, strategy="fedavg", wait_for_clients=0.5)
    w.server = server
    state = await asyncio.wait_for(server.run(), 30)
    assert state.status == "failed"
    assert state.message == "only 1 of 3 hospitals became healthy within 0s; MIN_CLIENTS is 2"
    assert ("waiting_for_clients", "1/3 healthy, need 2 (MIN_CLIENTS)") in w.seen
    assert set(w.waiting_messages()) == {"1/3 healthy, need 2 (MIN_CLIENTS)"}
