"""Classify a folder of images with a saved HemaFed model into a CSV.

    python -m hemafed_aggregator.classify --model results/<run>/best.keras --images DIR --out predictions.csv

(``make classify RUN=<run_id> IMAGES=<dir> [OUT=...]`` runs it in the aggregator image.) The folder
is walked recursively (hidden entries ignored); every image is decoded and resized exactly as in
training. Columns: ``file`` (relative to DIR), ``top1_class``, ``top1_score``, ``top2_class``,
``top2_score``. Files that are not images or cannot be decoded are skipped, counted per reason
and listed on stderr, never fatal. Exit status: 0 when at least one image was classified (or the
folder holds no files at all), 1 when every file was skipped, 2 for a bad model or folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemafed.data.imagefiles import ImageDecodeError, decode_rgb, is_image_name

COLUMNS = ("file", "top1_class", "top1_score", "top2_class", "top2_score")


@dataclass
class ClassifyResult:
    classified: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def skipped_reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(r for _, r in self.skipped).items()))


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root``, sorted by relative path (symlinked folders not followed)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / name for name in filenames if not name.startswith("."))
    yield from sorted(found, key=lambda p: p.relative_to(root).as_posix())


def classify_folder(model, images_dir: Path, out_csv: Path, *, batch_size: int = 64) -> ClassifyResult:
    """Write the CSV for every image under ``images_dir`` using ``model`` (an inference.RunModel)."""
    from hemafed_aggregator.inference import top_k

    result = ClassifyResult()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        batch: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            if not batch:
                return
            probs = model.probabilities(np.stack([img for _, img in batch]), batch_size=batch_size)
            for (rel, _), row in zip(batch, probs, strict=True):
                (i1, p1), (i2, p2) = top_k(row, 2)  # every model has >= 2 classes
                writer.writerow([rel, model.classes[i1], f"{p1:.6f}", model.classes[i2], f"{p2:.6f}"])
            result.classified += len(batch)
            batch.clear()

        for path in walk_files(images_dir):
            rel = path.relative_to(images_dir).as_posix()
            if not is_image_name(path.name):
                result.skipped.append((rel, "not_image"))
                continue
            try:
                batch.append((rel, decode_rgb(path, model.image_size)))
            except ImageDecodeError as exc:
                result.skipped.append((rel, exc.reason))
                continue
            if len(batch) >= batch_size:
                flush()
        flush()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hemafed_aggregator.classify", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="a saved model, e.g. results/<run>/best.keras "
                    "(its class names come from the .json next to it)")
    ap.add_argument("--images", required=True, type=Path, help="folder of images (walked recursively)")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write (default %(default)s)")
    ap.add_argument("--classes", default=None, help="comma-separated class names in output order "
                    "(only when the model has no .json metadata)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    if not args.images.is_dir():
        print(f"error: image folder not found: {args.images}", file=sys.stderr)
        return 2
    from hemafed_aggregator.inference import ModelFileError, RunModel

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        model = RunModel.load(args.model, classes=classes)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = classify_folder(model, args.images, args.out, batch_size=args.batch_size)
    for rel, reason in res.skipped:
        print(f"skipped {rel}: {reason}", file=sys.stderr)
    reasons = ", ".join(f"{k} {v}" for k, v in res.skipped_reasons().items())
    print(f"classified {res.classified} image(s) into {args.out} with {args.model.name} "
          f"(run {model.run_id or '?'}, round {model.round if model.round is not None else '?'}); "
          f"skipped {len(res.skipped)}{f' ({reasons})' if reasons else ''}", file=sys.stderr)
    return 1 if res.classified == 0 and res.skipped else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
