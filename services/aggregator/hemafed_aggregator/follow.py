"""Follow a run from the terminal until it ends: ``python -m hemafed_aggregator.follow``.

Polls the aggregator's /api/status (with retries while it starts), prints round k/R, the
global validation accuracy and each hospital's state, and exits 0 when the run finished,
1 when it failed (with the reason), 2 when the aggregator could not be reached."""

from __future__ import annotations

import argparse
import sys
import time

import httpx


def _line(s: dict) -> str:
    hs = " ".join(f"{h}:{v['status']}" for h, v in sorted(s.get("hospitals", {}).items()))
    best = s.get("best_val_accuracy")
    best_txt = f" best val {best:.3f} (round {s.get('best_round')})" if best is not None else ""
    elapsed = time.time() - s.get("started_at", time.time())
    eta = ""
    done = s.get("rounds_completed", 0)
    if done and s.get("status") == "running":
        eta = f" ETA {elapsed / done * (s['rounds_total'] - done):.0f}s"
    return (f"[{s['status']}] round {s.get('rounds_completed', 0)}/{s.get('rounds_total')}{best_txt}{eta} "
            f"| {hs} {('| ' + s['message']) if s.get('message') else ''}")


def follow(url: str, interval: float, timeout: float, out=sys.stdout) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    failures = 0
    with httpx.Client(timeout=10.0) as http:
        while time.monotonic() < deadline:
            try:
                r = http.get(f"{url}/api/status")
                r.raise_for_status()
                s = r.json()
                failures = 0
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                if failures > 60:
                    print(f"aggregator unreachable at {url}: {exc}", file=out)
                    return 2
                time.sleep(interval)  # retry loop while the aggregator (re)starts
                continue
            line = _line(s)
            key = line.split(" ETA ")[0] + line.split("|", 1)[-1]  # print on change, not on every ETA tick
            if key != last:
                print(line, file=out, flush=True)
                last = key
            if s["status"] == "finished":
                t = s.get("test_results") or {}
                acc = t.get("accuracy")
                print(f"run {s['run_id']} finished: best round {s.get('best_round')}, "
                      f"test accuracy {acc if acc is None else round(acc, 4)}, macro F1 "
                      f"{t.get('macro_f1') if t.get('macro_f1') is None else round(t['macro_f1'], 4)}", file=out)
                return 0
            if s["status"] == "failed":
                print(f"run {s['run_id']} FAILED: {s.get('message')}", file=out)
                return 1
            time.sleep(interval)
    print(f"gave up following after {timeout:.0f}s", file=out)
    return 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default="http://localhost:8080")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=6 * 3600)
    a = p.parse_args(argv)
    return follow(a.url.rstrip("/"), a.interval, a.timeout)


if __name__ == "__main__":
    sys.exit(main())
