"""Loading the held-out test set *with* its file names, for the per-image report.

Only the aggregator and the centralized baseline read the test set; hospitals never do (their
loader, :func:`hemafed.data.loader.load_image_folder`, returns no file names on purpose). Same
folder rules and decoding as the hospitals' loader (:mod:`hemafed.data.imagefiles`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemafed.data.imagefiles import ImageDecodeError, decode_rgb, scan_image_folder

__all__ = ["TestSet", "load_test_set"]


@dataclass(frozen=True, eq=False)
class TestSet:
    """``images`` uint8 (N, S, S, 3), ``labels`` indices into ``classes``, ``files`` the file
    names (``<class folder>/<file>``) in the same order."""

    __test__ = False  # not a pytest class

    images: np.ndarray
    labels: np.ndarray
    files: list[str]
    classes: list[str]
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_test_set(path: str | Path, image_size: int, classes: Sequence[str]) -> TestSet:
    """Every image of ``path/<class>/`` for the classes in ``classes`` (labels in that order);
    folders of other classes and undecodable files are skipped and counted."""
    scan = scan_image_folder(path, list(classes))
    reasons: Counter[str] = Counter(reason for _, reason in scan.skipped)
    index = {c: i for i, c in enumerate(classes)}
    images = np.empty((len(scan.files), image_size, image_size, 3), np.uint8)
    labels, files = [], []
    for p, cls in scan.files:
        try:
            images[len(labels)] = decode_rgb(p, image_size)
        except ImageDecodeError as exc:
            reasons[exc.reason] += 1
            continue
        labels.append(index[cls])
        files.append(f"{cls}/{p.name}")
    return TestSet(images=images[: len(labels)], labels=np.asarray(labels, np.int64), files=files,
                   classes=list(classes), skipped=sum(reasons.values()), skipped_reasons=dict(sorted(reasons.items())))
