"""Benchmark the real stack on PBC (not a test): 5 hospitals, non-IID, stated rounds and size.

    .venv/bin/python benchmarks/stack_benchmark.py [--rounds 8] [--image-size 32] [--clients 5]
                                                   [--split noniid] [--dataset ../shared/data/pbc-128]
    # or: make benchmark

Runs `make up ...` (which splits the data, starts the stack and follows the run), then reads the
metrics API and prints: test accuracy and macro F1 of the best model, wall time, mean round time,
mean fit time per hospital, bytes sent per round, and peak RSS / mean CPU per service.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(ROOT.parent / "shared" / "data" / "pbc-128"))
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--split", default="noniid")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--metrics-port", type=int, default=8090)
    p.add_argument("--run-id", default=None)
    p.add_argument("--skip-run", action="store_true", help="only report on an existing --run-id")
    a = p.parse_args(argv)
    if not Path(a.dataset).is_dir() and not a.dataset.endswith(".npz"):
        print(f"dataset {a.dataset} not found (expected ../shared/data/pbc-128 beside the repo)", file=sys.stderr)
        return 2
    run_id = a.run_id or f"bench-{a.split}-{a.image_size}px-{int(time.time())}"
    t0 = time.monotonic()
    if not a.skip_run:
        cmd = ["make", "--no-print-directory", "up", f"RUN_ID={run_id}", f"CLIENTS={a.clients}", f"SPLIT={a.split}",
               f"DATASET={a.dataset}", f"ROUNDS={a.rounds}", f"IMAGE_SIZE={a.image_size}",
               f"LOCAL_EPOCHS={a.local_epochs}", f"STRATEGY={a.strategy}", f"METRICS_PORT={a.metrics_port}"]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc != 0:
            print(f"make up failed with exit code {rc}", file=sys.stderr)
            return rc
    wall = time.monotonic() - t0
    api = f"http://127.0.0.1:{a.metrics_port}/api/runs/{run_id}"
    run = httpx.get(api, timeout=30).json()
    rounds = httpx.get(f"{api}/rounds", timeout=30).json()
    resources = httpx.get(f"{api}/resources", timeout=60).json()
    fits: dict[str, list[float]] = {}
    sent = []
    for r in rounds:
        sent.append(sum(h["update_bytes"] for h in r["hospitals"].values()))
        for hid, h in r["hospitals"].items():
            if h["fit_seconds"] is not None:
                fits.setdefault(hid, []).append(h["fit_seconds"])
    test = run.get("test_results") or {}
    print(f"\nrun {run_id}: {a.clients} hospitals, split {a.split}, {a.rounds} rounds, {a.image_size} px, "
          f"strategy {a.strategy}")
    print(f"  test accuracy (best round {run.get('best_round')}): {run.get('test_accuracy'):.4f}  "
          f"macro F1 {test.get('macro_f1', float('nan')):.4f}  on {test.get('num_examples')} held-out images")
    if not a.skip_run:
        print(f"  wall time (split + start + train + test): {wall:.0f} s")
    durations = [r["duration_seconds"] for r in rounds if r.get("duration_seconds")]
    print(f"  mean round time: {statistics.mean(durations):.1f} s  (val accuracy median by round: "
          + ", ".join(f"{r['global']['val_accuracy_median']:.3f}" for r in rounds) + ")")
    print(f"  bytes received per round (all updates): {statistics.mean(sent) / 1e6:.2f} MB")
    for hid in sorted(fits):
        print(f"  mean fit time {hid}: {statistics.mean(fits[hid]):.1f} s")
    by_service: dict[str, list[dict]] = {}
    for s in resources:
        by_service.setdefault(s["service"], []).append(s)
    for svc in sorted(by_service):
        ss = by_service[svc]
        print(f"  {svc:12s} peak RSS {max(s['rss_bytes'] for s in ss) / 2**20:7.0f} MiB   "
              f"mean CPU {statistics.mean(s['cpu_percent'] for s in ss):5.1f} %   ({len(ss)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
