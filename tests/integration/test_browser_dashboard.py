"""The dashboard in a real browser (headless Chromium) against the live stack.

It reuses the session's synthetic run (same name and arguments as test_stack.py, so no extra
run). When that run has not been started yet, `make up` runs in a thread while the browser
watches the dashboard *during* the run (status "running", first charts drawn); then, once the
run finished, the page must show every chart with real data points, the test results, and no
JavaScript error. Screenshots and the console log go to build/test-artifacts/.
"""

from __future__ import annotations

import threading
import time
import warnings

import httpx

from tests.integration.conftest import METRICS_URL
from tests.integration.test_stack import CLIENTS, ROUNDS

RUN_ARGS = dict(clients=CLIENTS, rounds=ROUNDS, split="iid", local_epochs=2)  # == test_stack.run
CLASSES = 8  # the synthetic dataset


def points(browser, chart: str) -> int:
    return int(browser.eval(f"+(document.getElementById('{chart}')?.getAttribute('data-points') || 0)"))


def _points_js(chart: str) -> str:
    return f"+document.getElementById('{chart}').getAttribute('data-points')"


class Background:
    """`stack.up(...)` in a thread; re-raises its failure when joined."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.stack.up("synthetic", **RUN_ARGS)
        except BaseException as exc:  # noqa: BLE001 - pytest.fail raises a BaseException
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"`make up` did not end within {timeout:.0f} s"
        if self.error is not None:
            raise self.error


def _running_run(stack, since: float, deadline: float, bg: Background) -> str | None:
    """The id of the synthetic run started after `since`, once the metrics service lists it
    (polled with a bounded deadline); None if `make up` ended first."""
    while time.monotonic() < deadline and bg.thread.is_alive():
        try:
            runs = httpx.get(f"{METRICS_URL}/api/runs", verify=stack.tls(), timeout=5).json()
        except (httpx.HTTPError, OSError, ValueError):  # stack (or its certificates) not up yet
            runs = []
        for r in runs:
            if r["id"].startswith("test-synthetic-") and r["started_at"] >= since - 5:
                return r["id"]
        time.sleep(1)
    return None


def test_dashboard_live_and_after_the_run(stack, browser):
    live_seen = False
    if "synthetic" not in stack.runs:
        t0 = time.time()
        bg = Background(stack)
        bg.thread.start()
        run_id = _running_run(stack, t0, time.monotonic() + 900, bg)
        if run_id is not None:
            browser.open(f"{METRICS_URL}/?run={run_id}")
            status = browser.wait_for("document.body.getAttribute('data-run-status')", timeout=60)
            if status == "running":
                # charts fill in while the run goes on (resource samples first, then each round)
                browser.wait_for(f"{_points_js('chart-cpu')} > 0 && {_points_js('chart-ram')} > 0", timeout=120)
                browser.wait_for(f"{_points_js('chart-accuracy')} > 0 || "
                                 "document.body.getAttribute('data-run-status') !== 'running'", timeout=900)
                live_seen = browser.eval("document.body.getAttribute('data-run-status')") == "running"
                if live_seen:
                    assert points(browser, "chart-timeline") >= CLIENTS
                    browser.screenshot("dashboard-live.png")
                    browser.assert_no_errors()
        bg.join(timeout=1800)
    run = stack.up("synthetic", **RUN_ARGS)

    # the finished run: the open page keeps polling and picks up the end without a reload
    if not live_seen:
        browser.open(f"{METRICS_URL}/?run={run.run_id}")
    browser.wait_for("document.body.getAttribute('data-run-status') === 'finished' && "
                     "!document.getElementById('card-test').hidden", timeout=60)
    updates_before = int(browser.eval("+document.body.getAttribute('data-updates')"))
    # global median + mean and each hospital, per round; one timeline cell per hospital and round
    browser.wait_for(f"{_points_js('chart-accuracy')} === {(2 + CLIENTS) * ROUNDS}", timeout=30)
    assert points(browser, "chart-timeline") == CLIENTS * ROUNDS
    assert points(browser, "chart-loss") >= ROUNDS
    assert points(browser, "chart-cpu") > 0 and points(browser, "chart-ram") > 0
    assert points(browser, "chart-classes") == CLIENTS * CLASSES  # every hospital has every class (iid)
    assert points(browser, "chart-confusion") == CLASSES * CLASSES
    assert points(browser, "chart-gpu") == 0  # CI has no GPU: the card says so instead of drawing
    assert browser.eval("document.getElementById('run-round').textContent") == f"round {ROUNDS} of {ROUNDS}"
    assert int(browser.eval("+document.getElementById('table-rounds').getAttribute('data-rows')")) == ROUNDS
    assert int(browser.eval("+document.getElementById('table-hospitals').getAttribute('data-rows')")) == CLIENTS
    assert int(browser.eval("+document.getElementById('table-per-class').getAttribute('data-rows')")) == CLASSES
    services = int(browser.eval("+document.getElementById('table-resources').getAttribute('data-rows')"))
    assert services >= CLIENTS + 2  # hospitals, aggregator, metrics
    # every table has its CSV and JSON download, and they answer
    links = browser.eval("[...document.querySelectorAll('a.dl')].map(a => a.getAttribute('href'))")
    assert len(links) == 10
    for href in links:
        r = stack.api(href)
        assert r.status_code == 200, href
        assert r.text.strip(), href
    # it keeps polling (no reload needed)
    browser.wait_for(f"+document.body.getAttribute('data-updates') > {updates_before}", timeout=30)
    browser.screenshot("dashboard.png")
    browser.save_console("dashboard-console.json")
    browser.assert_no_errors()

    # the runs page lists the run with its figures and links to its dashboard
    browser.open(f"{METRICS_URL}/runs")
    browser.wait_for(f"document.querySelector('tr[data-run-id=\"{run.run_id}\"]')", timeout=30)
    row = browser.eval(f"document.querySelector('tr[data-run-id=\"{run.run_id}\"]').innerText")
    assert "finished" in row and f"{ROUNDS} / {ROUNDS}" in row and "%" in row
    browser.screenshot("runs.png")
    browser.assert_no_errors()
    if not live_seen:
        warnings.warn("the synthetic run had already finished (started by an earlier test): the dashboard was "
                      "checked after the run only; run this file first to watch it live", stacklevel=1)
