"""Resource sampling shared by every service: CPU, RSS and (when present) GPU of this process.

:func:`sample_process` takes one :class:`~hemafed.schemas.ResourceSampleCreate`;
:class:`ResourceReporter` samples in the background and POSTs batches to the metrics
service (``{metrics_url}/api/resources``), buffering while it is unreachable::

    async with ResourceReporter("hospital-a", "http://metrics:8000", interval=2.0):
        ...  # serve

GPU figures come from NVML (package ``nvidia-ml-py``, module ``pynvml``); without the
package, a driver or a GPU they are ``None``. NVML is initialised once; a failure is cached
and never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import httpx
import psutil

from hemafed.schemas import ResourceSampleCreate

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- CPU / RSS

_proc_lock = threading.Lock()
_proc: psutil.Process | None = None


def _process() -> psutil.Process:
    """This process's psutil handle, re-created after a fork (cpu_percent keeps state in it)."""
    global _proc
    if _proc is None or _proc.pid != os.getpid():
        _proc = psutil.Process()
        _proc.cpu_percent(None)  # prime: the first non-blocking call always returns 0.0
    return _proc


# --------------------------------------------------------------------------- NVML


class _Nvml:
    """Lazily initialised NVML; ``handles`` is empty when NVML or a GPU is unavailable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tried = False
        self.module: Any = None
        self.handles: list[Any] = []

    def reset(self) -> None:
        """Forget the cached result (tests); the next sample tries NVML again."""
        with self._lock:
            self._tried, self.module, self.handles = False, None, []

    def ensure(self) -> bool:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    count = pynvml.nvmlDeviceGetCount()
                    self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                    self.module = pynvml
                except Exception as exc:  # ImportError, NVMLError (no driver / no GPU), ...
                    log.debug("NVML unavailable: %s", exc)
                    self.module, self.handles = None, []
            return bool(self.handles)

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        """(utilisation %, memory bytes) for ``pid``; (None, None) without NVML or on error.

        Memory is the process's own where NVML lists it (summed over devices), else the
        device-used memory. Utilisation is device-wide (NVML has no cheap per-process
        figure), averaged over the devices the process uses, else over all devices.
        """
        if not self.ensure():
            return None, None
        nv = self.module
        try:
            own_mem = 0
            own_devices = []
            for h in self.handles:
                procs = []
                for getter in (
                    "nvmlDeviceGetComputeRunningProcesses",
                    "nvmlDeviceGetGraphicsRunningProcesses",
                ):
                    with contextlib.suppress(Exception):
                        procs.extend(getattr(nv, getter)(h))
                mine = [p for p in procs if p.pid == pid and p.usedGpuMemory is not None]
                if mine:
                    own_devices.append(h)
                    own_mem += sum(int(p.usedGpuMemory) for p in mine)
            devices = own_devices or self.handles
            util = sum(float(nv.nvmlDeviceGetUtilizationRates(h).gpu) for h in devices) / len(devices)
            mem = own_mem if own_devices else sum(int(nv.nvmlDeviceGetMemoryInfo(h).used) for h in devices)
            return util, mem
        except Exception as exc:  # GPU lost, permission, ...: a sample without GPU figures
            log.debug("NVML sample failed: %s", exc)
            return None, None


_nvml = _Nvml()


def sample_process(service: str) -> ResourceSampleCreate:
    """One resource sample of this process, labelled ``service``.

    ``cpu_percent`` is non-blocking (since the previous call in this process), relative to
    one core like ``top`` (may exceed 100 on several cores); the first call in a process
    reports 0.0. It does not block, but NVML calls take a few ms: call it from a worker
    thread in async code (as :class:`ResourceReporter` does).
    """
    with _proc_lock:
        proc = _process()
        with proc.oneshot():
            cpu = proc.cpu_percent(None)
            rss = proc.memory_info().rss
    gpu_util, gpu_mem = _nvml.sample(proc.pid)
    return ResourceSampleCreate(
        service=service,
        t=time.time(),
        cpu_percent=max(0.0, float(cpu)),
        rss_bytes=int(rss),
        gpu_util=gpu_util,
        gpu_mem_bytes=gpu_mem,
    )


# --------------------------------------------------------------------------- reporter

#: responses that say the batch itself is unacceptable: resending it would never succeed
_REJECTED = frozenset({400, 413, 422})


class ResourceReporter:
    """Samples every ``interval`` s in the background and POSTs batches to the metrics service.

    Use ``async with ResourceReporter(...)`` or ``await start()`` / ``await stop()``.
    While the metrics service is unreachable (connection error, timeout, 5xx, ...) samples
    wait in a buffer of ``max_buffer`` and go out, oldest first, when it is back; beyond the
    bound the oldest are dropped and counted in :attr:`dropped`. A batch answered with
    400/413/422 is discarded (counted in :attr:`rejected`). Sampling runs in a worker thread;
    sending has its own task with exponential back-off, so a slow server never delays sampling.
    """

    def __init__(
        self,
        service: str,
        metrics_url: str,
        interval: float = 2.0,
        *,
        client: httpx.AsyncClient | None = None,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        timeout: float = 5.0,
        max_backoff: float = 30.0,
        sampler: Callable[[str], ResourceSampleCreate] = sample_process,
    ) -> None:
        if interval <= 0 or max_buffer < 1 or batch_size < 1:
            raise ValueError("interval, max_buffer and batch_size must be positive")
        self.service = service
        self.url = metrics_url.rstrip("/") + "/api/resources"
        self.interval = interval
        self.batch_size = min(batch_size, 10_000)  # ResourceBatchCreate's bound
        self.timeout = timeout
        self.max_backoff = max_backoff
        self._sampler = sampler
        self._client = client
        self._own_client = client is None
        self._buffer: deque[ResourceSampleCreate] = deque(maxlen=max_buffer)
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._send_lock = asyncio.Lock()
        #: samples dropped because the buffer was full / rejected by the server / delivered
        self.dropped = 0
        self.rejected = 0
        self.delivered = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        """Samples buffered and not yet delivered."""
        return len(self._buffer)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def __aenter__(self) -> ResourceReporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the sampling and sending tasks (idempotent)."""
        if self._tasks:
            return
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        self._wakeup = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks = [
            asyncio.create_task(self._sample_loop(), name=f"resources-sample-{self.service}"),
            asyncio.create_task(self._send_loop(), name=f"resources-send-{self.service}"),
        ]

    async def stop(self, *, flush: bool = True) -> None:
        """Stop the tasks, then (``flush``) try once to deliver what is buffered."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if flush and self._client is not None:
            await self.flush()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def add(self, sample: ResourceSampleCreate) -> None:
        """Buffer one sample (dropping, and counting, the oldest when full)."""
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(sample)
        self._wakeup.set()

    async def sample_once(self) -> None:
        """Take one sample in a worker thread and buffer it."""
        self.add(await asyncio.to_thread(self._sampler, self.service))

    async def flush(self) -> bool:
        """Send the buffer in batches; True when it is empty afterwards, False on a failure."""
        if self._client is None:
            raise RuntimeError("ResourceReporter is not started")
        async with self._send_lock:
            while self._buffer:
                batch = list(islice(self._buffer, self.batch_size))
                body = {"samples": [s.model_dump(mode="json") for s in batch]}
                try:
                    resp = await self._client.post(self.url, json=body, timeout=self.timeout)
                except Exception as exc:  # connection refused, timeout, DNS, bad URL, ...
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.debug("resource report to %s failed: %s", self.url, self.last_error)
                    return False
                if resp.is_success or resp.status_code in _REJECTED:
                    self._discard(batch)
                    if resp.is_success:
                        self.delivered += len(batch)
                    else:
                        self.rejected += len(batch)
                        log.warning("metrics service rejected %d samples: %s", len(batch), resp.text[:200])
                else:
                    self.last_error = f"HTTP {resp.status_code}"
                    return False
            self.last_error = None
            return True

    def _discard(self, batch: list[ResourceSampleCreate]) -> None:
        # Samples taken meanwhile were appended on the right and the oldest may have been
        # dropped on the left, so pop by identity rather than by count.
        sent = {id(s) for s in batch}
        while self._buffer and id(self._buffer[0]) in sent:
            self._buffer.popleft()

    async def _sample_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("resource sampling failed")
            due = max(due + self.interval, loop.time())  # never burst to catch up
            await asyncio.sleep(due - loop.time())

    async def _send_loop(self) -> None:
        failures = 0
        while True:
            if not self._buffer:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                ok = await self.flush()
            except Exception:
                log.exception("resource reporting failed")
                ok = False
            if ok:
                failures = 0
            else:
                failures += 1
                await asyncio.sleep(min(self.interval * 2 ** min(failures - 1, 10), self.max_backoff))
