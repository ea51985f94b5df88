"""Helpers shared by the in-process tests (no real datasets: synthetic images in tmp dirs)."""

from __future__ import annotations

from pathlib import Path

from hemafed.data.synthetic import write_image_folder
from hemafed_aggregator.inprocess import RoutingTransport  # noqa: F401 - re-exported for the tests


def synthetic_folder(root: Path, n_per_class: int = 6, size: int = 32, seed: int = 0, classes=None) -> Path:
    write_image_folder(root, n_per_class, image_size=size, seed=seed)
    if classes is not None:  # keep only some classes (label skew)
        for d in root.iterdir():
            if d.name not in classes:
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
    return root
