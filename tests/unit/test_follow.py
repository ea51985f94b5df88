"""The terminal live view (hemafed_aggregator.follow) over a fake aggregator: a scripted
sequence of /api/status answers served through httpx.MockTransport, no sleeping."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path

import certifi
import httpx
import pytest

from hemafed_aggregator import follow as fw

H = ("hospital-1", "hospital-2", "hospital-10")


def hospitals(state: str = "ok", **over: str) -> dict:
    out = {h: {"status": state, "last_round": 0, "message": "", "num_train": 100 * (i + 1)} for i, h in enumerate(H)}
    for h, st in over.items():
        out[h.replace("_", "-")]["status"] = st
    return out


def rnd(n: int, median: float, mean: float, duration: float = 10.0, **status: str) -> dict:
    hs = {h: {"status": "ok", "val_accuracy": median, "num_examples": 100} for h in H}
    for h, st in status.items():
        hs[h.replace("_", "-")] = {"status": st, "val_accuracy": None, "num_examples": 0}
    return {"round": n, "global": {"val_accuracy_median": median, "val_accuracy_mean": mean, "val_loss": 1.0},
            "hospitals": hs, "duration_seconds": duration, "report": {}}


ROUNDS = [rnd(1, 0.5, 0.45), rnd(2, 0.7, 0.65, 20.0, hospital_2="timeout"), rnd(3, 0.8, 0.78)]


def status(state: str, done: int, **kw) -> dict:
    return {"run_id": "run-x", "rounds_total": 3, "status": state, "round": kw.pop("round", done),
            "rounds_completed": done, "best_round": kw.pop("best_round", None),
            "best_val_accuracy": kw.pop("best_val_accuracy", None), "message": kw.pop("message", ""),
            "started_at": 1000.0, "finished_at": kw.pop("finished_at", None),
            "hospitals": kw.pop("hospitals", hospitals("healthy")), "test_results": kw.pop("test_results", None),
            "classes": [], "test_accuracy": None, **kw}


FINISHED = status("finished", 3, best_round=3, best_val_accuracy=0.8, finished_at=1100.0,
                  hospitals=hospitals(), test_results={"accuracy": 0.76, "macro_f1": 0.74, "num_examples": 240})
SEQUENCE = [
    None,  # the aggregator is still starting: a connection error, retried
    status("waiting_for_clients", 0),
    status("running", 0, round=1, hospitals=hospitals("training")),
    status("running", 1, round=2, best_round=1, best_val_accuracy=0.5, hospitals=hospitals("training")),
    status("running", 1, round=2, best_round=1, best_val_accuracy=0.5, hospitals=hospitals("training")),
    status("running", 2, round=3, best_round=2, best_val_accuracy=0.7,
           hospitals=hospitals("training", hospital_2="timeout")),
    status("evaluating", 3, best_round=3, best_val_accuracy=0.8, hospitals=hospitals()),
    FINISHED,
]


class FakeAggregator:
    """Answers /api/status from a script (None = connection refused) and /api/rounds from the
    rounds completed so far; records the requests."""

    def __init__(self, script: list[dict | None]) -> None:
        self.script = list(script)
        self.current: dict | None = None
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/api/status":
            item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            if item is None:
                raise httpx.ConnectError("connection refused", request=request)
            self.current = item
            return httpx.Response(200, json=item)
        if request.url.path == "/api/rounds":
            done = self.current["rounds_completed"] if self.current else 0
            return httpx.Response(200, json=ROUNDS[:done])
        return httpx.Response(404, json={"detail": "not found"})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def run(script: list[dict | None], *, tty: bool, **kw) -> tuple[int, str, FakeAggregator]:
    agg = FakeAggregator(script)
    clock = Clock()
    out = io.StringIO()
    with httpx.Client(transport=httpx.MockTransport(agg)) as client:
        rc = fw.follow("http://agg", 5.0, kw.pop("timeout", 3600), out, tty=tty, client=client,
                       sleep=clock.sleep, clock=clock, **kw)
    return rc, out.getvalue(), agg


def test_plain_output_prints_changes_and_a_summary_table() -> None:
    rc, text, agg = run(SEQUENCE, tty=False, dashboard="http://localhost:8090/?run=run-x", results="/data/results")
    assert rc == 0
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text  # plain lines for logs and CI
    assert lines[0] == "[waiting_for_clients] round 0/3 | h1:up h2:up h10:up"
    assert lines[1] == "[running] round 0/3 (training 1) | h1:fit h2:fit h10:fit"
    # round 1 done: global accuracy from /api/rounds, ETA from the mean round duration (10 s x 2)
    assert lines[2] == ("[running] round 1/3 (training 2) | ETA 20s | val acc 0.500 median 0.450 mean "
                        "| h1:fit h2:fit h10:fit | best val 0.500 (round 1)")
    # the unchanged status (same round, same states) is not printed again
    # ETA: the mean of 10 s and 20 s, one round left
    assert lines[3] == ("[running] round 2/3 (training 3) | ETA 15s | val acc 0.700 median 0.650 mean "
                        "| h1:fit h2:timeout h10:fit | best val 0.700 (round 2)")
    assert lines[4] == "[evaluating] round 3/3 | val acc 0.800 median 0.780 mean | h1:ok h2:ok h10:ok | best val 0.800 (round 3)"
    assert lines[5] == "[finished] round 3/3 | val acc 0.800 median 0.780 mean | h1:ok h2:ok h10:ok | best val 0.800 (round 3)"
    assert lines[6] == ""
    assert lines[7:] == [
        "run run-x finished",
        "  status              finished",
        "  rounds              3 of 3 in 1m40s",
        "  best round          3 (val accuracy 0.800)",
        "  last round val acc  0.800 median, 0.780 mean",
        "  test accuracy       0.760 (macro f1 0.740) on 240 images",
        "",
        "  hospital      examples  last val acc  last state",
        "  hospital-1         100         0.800  ok",
        "  hospital-2         200         0.800  ok",
        "  hospital-10        300         0.800  ok",
        "",
        "  dashboard    http://localhost:8090/?run=run-x",
        "  model        /data/results/run-x/best.keras (final: /data/results/run-x/final.keras)",
        "  test report  /data/results/run-x/test_results.json",
    ]
    # the rounds are fetched only when a round completed (3 times), the status on every poll
    assert agg.paths.count("/api/rounds") == 3
    assert agg.paths.count("/api/status") == len(SEQUENCE)


def test_tty_output_rewrites_one_line_and_keeps_a_line_per_round() -> None:
    rc, text, _ = run(SEQUENCE, tty=True)
    assert rc == 0
    # every status update rewrites the current line: carriage return, text, clear to end of line
    assert text.count("\r") >= len(SEQUENCE) - 1
    assert "\x1b[K" in text
    lines = text.replace("\x1b[K", "").split("\n")
    permanent = [ln.rsplit("\r", 1)[-1] for ln in lines]
    assert "round 1/3 | val acc 0.500 median 0.450 mean | 3/3 answered | 10s" in permanent
    assert "round 2/3 | val acc 0.700 median 0.650 mean | 2/3 answered (hospital-2 timeout) | 20s" in permanent
    assert "round 3/3 | val acc 0.800 median 0.780 mean | 3/3 answered | 10s" in permanent
    assert "run run-x finished" in permanent
    # each round's permanent line is printed once
    assert sum(1 for ln in permanent if ln.startswith("round 2/3 |")) == 1


def test_failed_run_exits_1_with_the_reason() -> None:
    failed = status("failed", 1, message="only 1 of 3 hospitals healthy", hospitals=hospitals("unreachable"),
                    finished_at=1050.0)
    rc, text, _ = run([status("running", 0), failed], tty=False)
    assert rc == 1
    assert "run run-x failed" in text
    assert "  status              failed (only 1 of 3 hospitals healthy)" in text
    assert "  hospital-2         200         0.500  unreachable" in text  # its last round's figure
    assert text.rstrip().endswith("run run-x FAILED: only 1 of 3 hospitals healthy")


def test_unreachable_aggregator_exits_2_after_bounded_retries() -> None:
    rc, text, agg = run([None], tty=False, dashboard="http://localhost:8090/", results="/r")
    assert rc == 2
    assert agg.paths.count("/api/status") == fw.MAX_FAILURES
    assert "aggregator unreachable at http://agg" in text
    assert "dashboard: http://localhost:8090/" in text and "results:   /r" in text


def test_gives_up_after_the_timeout() -> None:
    rc, text, _ = run([status("running", 0)], tty=False, timeout=30)
    assert rc == 3
    assert text.splitlines()[-1] == "gave up following after 30s"


def test_eta_falls_back_to_elapsed_time_without_durations() -> None:
    p = fw.Progress(status=status("running", 2), rounds=[{"round": 1}, {"round": 2}])
    assert p.eta(now=1060.0) == pytest.approx(30.0)  # 60 s for 2 rounds, 1 left
    assert fw.Progress(status=status("running", 0)).eta(now=1060.0) is None
    assert fw.Progress(status=status("finished", 3)).eta(now=1060.0) is None


@pytest.mark.parametrize(("secs", "text"), [(None, "–"), (-1, "–"), (5.4, "5s"), (75, "1m15s"), (3725, "1h02m")])
def test_fmt_seconds(secs, text) -> None:
    assert fw.fmt_seconds(secs) == text


def test_main_parses_its_options(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_follow(url, interval, timeout, **kw):
        seen.update(url=url, interval=interval, timeout=timeout, **kw)
        return 0

    monkeypatch.setattr(fw, "follow", fake_follow)
    assert fw.main(["--url", "http://a:8080/", "--interval", "1", "--dashboard", "http://d/", "--results", "/r",
                    "--plain"]) == 0
    assert seen == {"url": "http://a:8080", "interval": 1.0, "timeout": 6 * 3600, "tty": False,
                    "dashboard": "http://d/", "results": "/r", "verify": True}
    assert json.dumps(seen)  # plain values only
    # --cafile: an SSL context trusting that CA; a missing file (TLS=off) keeps the default
    assert fw.main(["--cafile", "/nonexistent/ca.pem"]) == 0 and seen["verify"] is True and seen["tty"] is None
    ca = tmp_path / "ca.pem"
    ca.write_text(Path(certifi.where()).read_text())  # any valid CA bundle will do
    assert fw.main(["--cafile", str(ca), "--tty"]) == 0
    assert isinstance(seen["verify"], ssl.SSLContext) and seen["tty"] is True
