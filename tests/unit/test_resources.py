"""hemafed.resources: sample_process (NVML faked) and ResourceReporter (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import httpx
import pytest

from hemafed import resources
from hemafed.resources import ResourceReporter, sample_process
from hemafed.schemas import ResourceSampleCreate
from hemafed_metrics.app import create_app
from hemafed_metrics.store import InMemoryStore

MB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_nvml() -> Iterator[None]:
    resources._nvml.reset()
    yield
    resources._nvml.reset()


# --------------------------------------------------------------------------- sample_process


def test_sample_process_fields() -> None:
    before = time.time()
    s = sample_process("hospital-a")
    assert isinstance(s, ResourceSampleCreate)
    assert s.service == "hospital-a"
    assert before <= s.t <= time.time()
    assert s.cpu_percent >= 0
    assert 1 * MB < s.rss_bytes < 64 * 1024 * MB
    assert (s.gpu_util is None) == (s.gpu_mem_bytes is None)


def test_cpu_percent_sees_busy_process() -> None:
    sample_process("x")
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    assert sample_process("x").cpu_percent > 10  # relative to one core, ~100 when not starved


def test_nvml_absent_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    s = sample_process("x")
    assert (s.gpu_util, s.gpu_mem_bytes) == (None, None)


def fake_nvml(
    processes: list[SimpleNamespace], init_error: Exception | None = None, util_error: bool = False
) -> SimpleNamespace:
    calls = {"init": 0}

    def init() -> None:
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    def util(handle: str) -> SimpleNamespace:
        if util_error:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(gpu={"gpu0": 30, "gpu1": 50}[handle])

    return SimpleNamespace(
        calls=calls,
        nvmlInit=init,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetComputeRunningProcesses=lambda h: [p for p in processes if p.device == h],
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [],
        nvmlDeviceGetUtilizationRates=util,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used={"gpu0": 1000, "gpu1": 3000}[h]),
    )


def test_nvml_init_failure_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = fake_nvml([], init_error=RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    for _ in range(3):
        s = sample_process("x")
        assert (s.gpu_util, s.gpu_mem_bytes) == (None, None)
    assert nv.calls["init"] == 1


def test_nvml_own_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    nv = fake_nvml(
        [
            SimpleNamespace(device="gpu1", pid=me, usedGpuMemory=256),
            SimpleNamespace(device="gpu1", pid=me + 1, usedGpuMemory=999),
            SimpleNamespace(device="gpu0", pid=me + 2, usedGpuMemory=777),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    s = sample_process("x")
    assert (s.gpu_util, s.gpu_mem_bytes) == (50.0, 256)  # only gpu1, where this process is listed


def test_nvml_device_memory_when_process_not_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. in a container, where NVML lists host pids, or usedGpuMemory is unavailable
    nv = fake_nvml([SimpleNamespace(device="gpu0", pid=os.getpid(), usedGpuMemory=None)])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    s = sample_process("x")
    assert (s.gpu_util, s.gpu_mem_bytes) == (40.0, 4000)  # mean util, summed device-used memory


def test_nvml_error_while_sampling_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], util_error=True))
    s = sample_process("x")
    assert (s.gpu_util, s.gpu_mem_bytes) == (None, None)
    assert s.rss_bytes > 0


# --------------------------------------------------------------------------- ResourceReporter


class FakeServer:
    """A MockTransport handler recording delivered samples; ``up`` switches failures."""

    def __init__(self, up: bool = True, fail_status: int | None = None) -> None:
        self.up = up
        self.fail_status = fail_status
        self.received: list[dict] = []
        self.posts = 0
        self.attempts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        assert request.method == "POST"
        assert request.url == "http://metrics:8000/api/resources"
        if not self.up:
            if self.fail_status is not None:
                return httpx.Response(self.fail_status)
            raise httpx.ConnectError("connection refused", request=request)
        samples = json.loads(request.content)["samples"]
        self.posts += 1
        self.received.extend(samples)
        return httpx.Response(202, json={"accepted": len(samples)})


def counting_sampler() -> Callable[[str], ResourceSampleCreate]:
    n = 0

    def sampler(service: str) -> ResourceSampleCreate:
        nonlocal n
        n += 1
        return ResourceSampleCreate(service=service, t=float(n), cpu_percent=1.0, rss_bytes=n)

    return sampler


def reporter(server: FakeServer, **kw: object) -> ResourceReporter:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    kw = {"interval": 0.01, "sampler": counting_sampler(), **kw}
    return ResourceReporter("hosp-a", "http://metrics:8000/", client=client, **kw)  # type: ignore[arg-type]


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
@pytest.mark.parametrize("fail_status", [None, 503])
async def test_reporter_buffers_while_down_and_delivers_after(fail_status: int | None) -> None:
    server = FakeServer(up=False, fail_status=fail_status)
    rep = reporter(server, max_backoff=0.05)
    async with rep:
        assert rep.running
        await wait_for(lambda: rep.pending >= 5 and server.attempts >= 2)
        assert server.received == [] and rep.delivered == 0
        assert rep.last_error is not None
        server.up = True
        await wait_for(lambda: len(server.received) >= 8 and rep.pending == 0)
    assert not rep.running
    ts = [s["t"] for s in server.received]
    assert ts == [float(i) for i in range(1, len(ts) + 1)]  # all of them, in order, once
    assert rep.delivered == len(ts) and rep.dropped == 0 and rep.pending == 0
    assert server.received[0] == {
        "service": "hosp-a",
        "t": 1.0,
        "cpu_percent": 1.0,
        "rss_bytes": 1,
        "gpu_util": None,
        "gpu_mem_bytes": None,
    }


@pytest.mark.anyio
async def test_reporter_buffer_bound_drops_oldest() -> None:
    server = FakeServer(up=False)
    rep = reporter(server, max_buffer=5, batch_size=2)
    sampler = counting_sampler()
    for _ in range(8):
        rep.add(sampler("hosp-a"))
    assert (rep.pending, rep.dropped) == (5, 3)
    await rep.start()
    await rep.stop(flush=False)
    assert await rep.flush() is False  # still down
    server.up = True
    assert await rep.flush() is True
    assert [s["t"] for s in server.received] == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert server.posts == 3  # batches of 2, 2, 1
    assert (rep.pending, rep.delivered, rep.dropped) == (0, 5, 3)


@pytest.mark.anyio
async def test_reporter_discards_rejected_batch() -> None:
    server = FakeServer(up=False, fail_status=422)
    rep = reporter(server)
    rep.add(counting_sampler()("hosp-a"))
    await rep.start()
    await rep.stop(flush=False)
    assert await rep.flush() is True
    assert (rep.pending, rep.rejected, rep.delivered) == (0, 1, 0)


@pytest.mark.anyio
async def test_reporter_stop_flushes() -> None:
    server = FakeServer(up=True)
    rep = reporter(server, interval=60.0)
    async with rep:
        await wait_for(lambda: rep.delivered == 1)  # the first sample is taken at once
        rep.add(ResourceSampleCreate(service="hosp-a", t=99.0, cpu_percent=0, rss_bytes=0))
    assert [s["t"] for s in server.received][-1] == 99.0
    assert rep.pending == 0


@pytest.mark.anyio
async def test_reporter_slow_server_does_not_delay_sampling() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.5)
        return httpx.Response(202, json={"accepted": 0})

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    rep = ResourceReporter("hosp-a", "http://metrics:8000", 0.01, client=client, sampler=counting_sampler())
    await rep.start()
    await asyncio.sleep(0.3)
    taken = rep.pending + rep.delivered
    await rep.stop(flush=False)
    assert taken >= 5


@pytest.mark.anyio
async def test_reporter_into_metrics_service() -> None:
    """End to end: real samples through the metrics app's POST /api/resources."""
    store = InMemoryStore()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store=store)))
    async with ResourceReporter("hosp-b", "http://metrics", 0.01, client=client) as rep:
        await wait_for(lambda: rep.delivered >= 3)
    got = store.list_resources(service="hosp-b")
    assert len(got) == rep.delivered >= 3
    assert all(s.rss_bytes > MB for s in got)
    await client.aclose()


def test_reporter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ResourceReporter("x", "http://m", interval=0)
    with pytest.raises(ValueError):
        ResourceReporter("x", "http://m", max_buffer=0)
