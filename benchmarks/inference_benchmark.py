"""Inference figures, in process (no Docker): the latency of ``POST /api/predict`` on the
aggregator app (upload, decode, resize, forward pass, JSON) and the batch classifier's throughput.

    .venv/bin/python benchmarks/inference_benchmark.py [--model results/<run>/best.keras]
        [--images ../shared/data/pbc-raw-sample] [--size 32] [--requests 50]

Without ``--model`` it times an untrained compact CNN of ``--size`` pixels and 8 classes (the
figures do not depend on the weights). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PBC_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def _model(args, tmp: Path) -> Path:
    if args.model:
        return Path(args.model)
    from hemafed.schemas import TaskSpec
    from hemafed_aggregator import modelops

    path = tmp / "bench" / "best.keras"
    task = TaskSpec(model="cnn", image_size=args.size, classes=PBC_CLASSES)
    modelops.save_keras(task, modelops.initial_weights(task)[0], path,
                        {"run_id": "bench", "best_round": 1, "rounds": 1, "kind": "best"})
    return path


async def _latency(model_path: Path, image: bytes, n: int) -> list[float]:
    import httpx

    from hemafed_aggregator.app import create_app
    from hemafed_aggregator.settings import AggregatorSettings, RunConfig

    run_id = model_path.parent.name
    settings = AggregatorSettings(hospitals={"h": "http://h"}, output_dir=model_path.parent.parent, auto_start=False)
    app = create_app(settings, RunConfig(run_id=run_id, rounds=1), report_resources=False)
    times = []
    async with app.router.lifespan_context(app):
        app.state.server.state.status = "finished"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agg") as c:
            for i in range(n + 1):
                t = time.perf_counter()
                r = await c.post("/api/predict", files={"file": ("cell.jpg", image, "image/jpeg")})
                r.raise_for_status()
                if i:  # the first call loads the model
                    times.append(time.perf_counter() - t)
                else:
                    print(f"first request (loads the model): {1000 * (time.perf_counter() - t):.0f} ms")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "pbc-raw-sample"))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    images = Path(args.images)
    jpgs = sorted(images.rglob("*.jpg"))
    if not jpgs:
        print(f"no JPEGs under {images}", file=sys.stderr)
        return 2
    from hemafed_aggregator.classify import classify_folder
    from hemafed_aggregator.inference import RunModel

    with tempfile.TemporaryDirectory() as tmp:
        model_path = _model(args, Path(tmp))
        times = asyncio.run(_latency(model_path, jpgs[0].read_bytes(), args.requests))
        print(f"POST /api/predict, {jpgs[0].stat().st_size} B JPEG: median {1000 * statistics.median(times):.1f} ms, "
              f"p95 {1000 * sorted(times)[int(0.95 * (len(times) - 1))]:.1f} ms over {len(times)} requests")
        model = RunModel.load(model_path)
        t = time.perf_counter()
        res = classify_folder(model, images, Path(tmp) / "predictions.csv")
        dt = time.perf_counter() - t
        print(f"classify {images}: {res.classified} images in {dt:.2f} s ({res.classified / dt:.0f} images/s), "
              f"skipped {len(res.skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
