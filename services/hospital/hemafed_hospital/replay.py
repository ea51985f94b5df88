"""Idempotent /fit (RELIABILITY.md): what a hospital does with a repeated or out-of-date request.

The aggregator calls the hospitals (``POST /fit``); a request names its run (``extra["run_id"]``)
and round. Per run (and task), the hospital remembers the last round it trained, a digest of
that request and its answer. The digest is of what the request asks for
(:func:`hemafed.exchange.request_digest`: round, instructions and the full weights, whether they
were sent or referred to as tensors the hospital holds), not of its bytes:

* the **same request again** (an aggregator that resumed after a crash, a retried HTTP call, a
  resend whole after a failed request that referred to held tensors) is answered with the
  remembered answer, byte for byte, without training again; if that round is still training, the
  repeat waits for it and gets the same answer;
* a request for a round **older** than the last one trained for that run is refused with 409
  (a late or replayed message must never roll the hospital back or train an old model again);
* the same round with **different** content is trained again (the agent then starts from its
  state before that round, see ``agent.py``).

Requests without a run id (older aggregators, direct calls) are neither remembered nor checked: each
is trained, and a lower round then means a new run, as the agent's algorithm state assumes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("hemafed.hospital")

#: runs whose last answer is kept (each holds one model update)
MAX_RUNS = 4


class StaleRound(Exception):
    def __init__(self, rnd: int, last: int, run_id: str) -> None:
        super().__init__(f"round {rnd} of run {run_id!r} is older than round {last}, which this hospital has "
                         f"already trained: a late or replayed request, refused")
        self.round, self.last = rnd, last


@dataclass
class _Entry:
    round: int
    digest: str
    done: threading.Event = field(default_factory=threading.Event)
    reply: bytes | None = None
    error: BaseException | None = None


class FitReplay:
    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self._lock = threading.Lock()
        self._last: OrderedDict[str, _Entry] = OrderedDict()
        self._training: dict[str, _Entry] = {}
        self.max_runs = max_runs
        #: how many requests were answered without training (replays)
        self.replayed = 0

    def run(self, key: str, run_id: str | None, rnd: int, digest: str, train: Callable[[], bytes]) -> bytes:
        """Answer the request of round ``rnd`` whose content has ``digest``: from memory, or by ``train()``."""
        if not run_id:  # a request that does not name its run: neither remembered nor checked
            return train()
        key = f"{run_id}\n{key}"
        with self._lock:
            last, busy = self._last.get(key), self._training.get(key)
            newest = max((e.round for e in (last, busy) if e is not None), default=-1)
            if rnd < newest:
                raise StaleRound(rnd, newest, run_id)
            same = [e for e in (busy, last) if e is not None and (e.round, e.digest) == (rnd, digest)]
            if same:
                entry, mine = same[0], False
            else:
                entry, mine = _Entry(rnd, digest), True
                self._training.setdefault(key, entry)
        if not mine:
            entry.done.wait()
            if entry.reply is not None:
                self.replayed += 1
                log.info("round %d sent again (same request): the same answer, not trained again", rnd)
                return entry.reply
            raise entry.error if entry.error is not None else RuntimeError("no answer")
        try:
            entry.reply = train()
            with self._lock:  # remembered only once trained: a refused or failed request is no answer
                self._last[key] = entry
                self._last.move_to_end(key)
                while len(self._last) > self.max_runs:
                    self._last.popitem(last=False)
            return entry.reply
        except BaseException as exc:
            entry.error = exc
            raise
        finally:
            with self._lock:
                if self._training.get(key) is entry:
                    del self._training[key]
            entry.done.set()
