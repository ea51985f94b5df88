"""Follow a run from the terminal until it ends: ``python -m hemafed_aggregator.follow``.

Polls the aggregator's ``/api/status`` (with bounded retries while it starts) and, when a round
completes, ``/api/rounds`` for the global accuracy. On a terminal (TTY) it keeps one compact
status line rewritten in place (round k of R, ETA, global validation accuracy, each hospital's
state) and prints a permanent line per completed round; otherwise (logs, CI) it prints a plain
line whenever something changes. At the end it prints a summary table: best round, validation
and test accuracy, each hospital's examples and last state, and where the dashboard, the model
files and the test report are.

Exit status: 0 when the run finished, 1 when it failed (with the reason), 2 when the aggregator
could not be reached, 3 when following timed out.
"""

from __future__ import annotations

import argparse
import shutil
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

#: consecutive failed polls before giving up on an unreachable aggregator
MAX_FAILURES = 60
_SHORT = {"healthy": "up", "training": "fit", "unknown": "?", "not_selected": "idle", "unreachable": "down",
          "timeout": "timeout", "error": "error", "rejected": "rejected", "ok": "ok", "evaluating": "eval"}


def fmt_seconds(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_acc(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


@dataclass
class Progress:
    """What the live view knows about the run (status + the completed rounds)."""

    status: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return int(self.status.get("rounds_completed") or len(self.rounds))

    @property
    def total(self) -> int:
        return int(self.status.get("rounds_total") or 0)

    def last_global(self) -> dict[str, Any]:
        return (self.rounds[-1].get("global") or {}) if self.rounds else {}

    def eta(self, now: float) -> float | None:
        """Seconds left: mean round duration times rounds left (None before the first round)."""
        s = self.status
        if s.get("status") != "running" or not self.done or self.done >= self.total:
            return None
        durations = [r["duration_seconds"] for r in self.rounds if isinstance(r.get("duration_seconds"), (int, float))]
        if durations:
            per = sum(durations) / len(durations)
        else:
            per = (now - float(s.get("started_at") or now)) / self.done
        return per * (self.total - self.done)

    def line(self, now: float) -> str:
        """One compact status line."""
        s = self.status
        g = self.last_global()
        parts = [f"[{s.get('status', '?')}] round {self.done}/{self.total}"]
        if s.get("status") == "running" and s.get("round") and s.get("round") != self.done:
            parts[0] += f" (training {s['round']})"
        eta = self.eta(now)
        if eta is not None:
            parts.append(f"ETA {fmt_seconds(eta)}")
        if g:
            parts.append(f"val acc {fmt_acc(g.get('val_accuracy_median'))} median "
                         f"{fmt_acc(g.get('val_accuracy_mean'))} mean")
        hs = s.get("hospitals") or {}
        if hs:
            parts.append(" ".join(f"{_short_id(h)}:{_SHORT.get(v.get('status'), v.get('status'))}"
                                  for h, v in sorted(hs.items(), key=lambda kv: _natural(kv[0]))))
        if s.get("best_val_accuracy") is not None:
            parts.append(f"best val {fmt_acc(s['best_val_accuracy'])} (round {s.get('best_round')})")
        if s.get("message"):
            parts.append(str(s["message"]))
        return " | ".join(parts)

    def round_line(self, i: int) -> str:
        """A permanent line for the i-th completed round (0-based)."""
        r = self.rounds[i]
        g = r.get("global") or {}
        hs = r.get("hospitals") or {}
        ok = sum(1 for v in hs.values() if v.get("status") == "ok")
        selected = sum(1 for v in hs.values() if v.get("status") != "not_selected")
        bad = ", ".join(f"{h} {v.get('status')}" for h, v in sorted(hs.items(), key=lambda kv: _natural(kv[0]))
                        if v.get("status") not in ("ok", "not_selected"))
        dur = r.get("duration_seconds")
        return (f"round {r.get('round')}/{self.total} | val acc {fmt_acc(g.get('val_accuracy_median'))} median "
                f"{fmt_acc(g.get('val_accuracy_mean'))} mean | {ok}/{selected} answered"
                + (f" ({bad})" if bad else "") + (f" | {fmt_seconds(dur)}" if isinstance(dur, (int, float)) else ""))

    def key(self) -> str:
        """The line without what changes on every tick (ETA), to print plain lines on change only."""
        return " | ".join(p for p in self.line(0.0).split(" | ") if not p.startswith("ETA "))


def _natural(s: str) -> tuple:
    head, _, tail = s.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (s, 0)


def _short_id(h: str) -> str:
    return "h" + h.rsplit("-", 1)[1] if h.startswith("hospital-") and h.rsplit("-", 1)[1].isdigit() else h


def summary(p: Progress, *, dashboard: str | None = None, results: str | None = None,
            elapsed: float | None = None) -> str:
    """The final table."""
    s = p.status
    run_id = s.get("run_id", "?")
    t = s.get("test_results") or {}
    rows: list[tuple[str, str]] = []
    best = s.get("best_round")
    best_acc = s.get("best_val_accuracy")
    rows.append(("status", f"{s.get('status', '?')}" + (f" ({s['message']})" if s.get("message") else "")))
    rows.append(("rounds", f"{p.done} of {p.total}" + (f" in {fmt_seconds(elapsed)}" if elapsed is not None else "")))
    rows.append(("best round", f"{best} (val accuracy {fmt_acc(best_acc)})" if best is not None else "–"))
    g = p.last_global()
    if g:
        rows.append(("last round val acc", f"{fmt_acc(g.get('val_accuracy_median'))} median, "
                                           f"{fmt_acc(g.get('val_accuracy_mean'))} mean"))
    if t:
        extra = ", ".join(f"{k.replace('_', ' ')} {fmt_acc(t[k])}" for k in ("macro_f1", "macro_auc")
                          if isinstance(t.get(k), (int, float)))
        rows.append(("test accuracy", fmt_acc(t.get("accuracy")) + (f" ({extra})" if extra else "")
                     + (f" on {t['num_examples']} images" if t.get("num_examples") else "")))
    width = max(len(k) for k, _ in rows)
    out = [f"run {run_id} {s.get('status', '?')}", *(f"  {k:<{width}}  {v}" for k, v in rows)]

    hs = s.get("hospitals") or {}
    if hs:
        last_rounds = {h: (p.rounds[-1].get("hospitals") or {}).get(h, {}) for h in hs} if p.rounds else {}
        hw = max(len("hospital"), *(len(h) for h in hs))
        out.append("")
        out.append(f"  {'hospital':<{hw}}  {'examples':>9}  {'last val acc':>12}  last state")
        for h, v in sorted(hs.items(), key=lambda kv: _natural(kv[0])):
            n = v.get("num_train")
            acc = (last_rounds.get(h) or {}).get("val_accuracy")
            state = v.get("status", "?") + (f" ({v['message']})" if v.get("message") else "")
            out.append(f"  {h:<{hw}}  {(f'{n:,}' if isinstance(n, int) else '–'):>9}  {fmt_acc(acc):>12}  {state}")

    where: list[tuple[str, str]] = []
    if dashboard:
        where.append(("dashboard", dashboard))
    if results:
        base = f"{results.rstrip('/')}/{run_id}/"
        where.append(("model", f"{base}best.keras (final: {base}final.keras)"))
        where.append(("test report", f"{base}test_results.json"))
    if where:
        ww = max(len(k) for k, _ in where)
        out.append("")
        out.extend(f"  {k:<{ww}}  {v}" for k, v in where)
    return "\n".join(out)


class LiveView:
    """Writes status lines: in place on a TTY, plain lines (on change) otherwise."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.last_key = ""
        self.live = False

    def status(self, p: Progress, now: float) -> None:
        if self.tty:
            cols = shutil.get_terminal_size((120, 24)).columns
            line = p.line(now)
            if len(line) > cols - 1:
                line = line[: cols - 2] + "…"
            self.out.write("\r" + line + "\x1b[K")
            self.out.flush()
            self.live = True
        else:
            key = p.key()
            if key != self.last_key:
                print(p.line(now), file=self.out, flush=True)
                self.last_key = key

    def permanent(self, text: str) -> None:
        """A line that stays (a completed round, the summary)."""
        if self.tty and self.live:
            self.out.write("\r\x1b[K")
            self.live = False
        print(text, file=self.out, flush=True)


def follow(url: str, interval: float = 2.0, timeout: float = 6 * 3600, out: TextIO = sys.stdout, *,
           tty: bool | None = None, dashboard: str | None = None, results: str | None = None,
           client: httpx.Client | None = None, verify: ssl.SSLContext | bool = True,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> int:
    """Follow the run at ``url`` until it ends; returns the exit status (see the module doc).
    ``verify``: how to check an HTTPS aggregator (e.g. a context trusting the stack's private CA)."""
    tty = out.isatty() if tty is None else tty
    view = LiveView(out, tty)
    p = Progress()
    http = client or httpx.Client(timeout=10.0, verify=verify)
    start = clock()
    failures = 0
    seen_rounds = 0
    try:
        while clock() - start < timeout:
            try:
                r = http.get(f"{url}/api/status")
                r.raise_for_status()
                p.status = r.json()
                if p.done != seen_rounds:
                    rr = http.get(f"{url}/api/rounds")
                    rr.raise_for_status()
                    p.rounds = rr.json()
                failures = 0
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                if failures >= MAX_FAILURES:
                    view.permanent(f"aggregator unreachable at {url}: {exc}")
                    _where(view, dashboard, results)
                    return 2
                sleep(interval)  # bounded retry loop while the aggregator (re)starts
                continue
            now = clock()
            while seen_rounds < len(p.rounds):
                seen_rounds += 1
                if tty:  # the in-place line moves on; keep one permanent line per round
                    view.permanent(p.round_line(seen_rounds - 1))
            state = p.status.get("status")
            if state in ("finished", "failed"):
                if tty:
                    view.permanent(p.line(now))
                else:
                    view.status(p, now)
                elapsed = (p.status.get("finished_at") or now) - (p.status.get("started_at") or start)
                view.permanent("")
                view.permanent(summary(p, dashboard=dashboard, results=results, elapsed=elapsed))
                if state == "failed":
                    view.permanent(f"run {p.status.get('run_id')} FAILED: {p.status.get('message')}")
                    return 1
                return 0
            view.status(p, now)
            sleep(interval)
        view.permanent(f"gave up following after {timeout:.0f}s")
        return 3
    finally:
        if client is None:
            http.close()


def _where(view: LiveView, dashboard: str | None, results: str | None) -> None:
    if dashboard:
        view.permanent(f"dashboard: {dashboard}")
    if results:
        view.permanent(f"results:   {results}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://localhost:8080", help="the aggregator")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="give up after this many seconds")
    p.add_argument("--dashboard", default=None, help="dashboard URL to show in the summary")
    p.add_argument("--results", default=None, help="results folder (host path) to show in the summary")
    p.add_argument("--cafile", default=None,
                   help="CA certificate that signed the aggregator's (HTTPS); ignored when the file is absent (TLS=off)")
    tty = p.add_mutually_exclusive_group()
    tty.add_argument("--tty", dest="tty", action="store_true", default=None, help="force the in-place live line")
    tty.add_argument("--plain", dest="tty", action="store_false", help="plain lines even on a terminal")
    a = p.parse_args(argv)
    verify: ssl.SSLContext | bool = True
    if a.cafile and Path(a.cafile).is_file():
        verify = ssl.create_default_context(cafile=a.cafile)
    return follow(a.url.rstrip("/"), a.interval, a.timeout, tty=a.tty, dashboard=a.dashboard, results=a.results,
                  verify=verify)


if __name__ == "__main__":
    sys.exit(main())
