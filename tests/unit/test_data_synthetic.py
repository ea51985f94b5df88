"""Synthetic blood-cell generator: determinism, classes, stains, learnability signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemafed.data import synthetic
from hemafed.data.synthetic import CLASSES, generate, render, stain_for, write_image_folder

PBC_FOLDERS = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]


def _stack(n: int, size: int, seed: int, sources=("A", "B")) -> tuple[np.ndarray, np.ndarray, list[str]]:
    items = list(generate(n, size, sources, seed))
    x = np.stack([it.image for it in items])
    y = np.array([CLASSES.index(it.class_name) for it in items])
    return x, y, [it.source for it in items]


def test_class_names_are_the_pbc_folder_names() -> None:
    assert list(CLASSES) == PBC_FOLDERS


def test_generate_shapes_dtype_counts_and_source_rotation() -> None:
    items = list(generate(3, image_size=40, sources=("A", "B"), seed=1))
    assert len(items) == 8 * 3
    assert all(it.image.shape == (40, 40, 3) and it.image.dtype == np.uint8 for it in items)
    assert [it.class_name for it in items[:3]] == ["basophil"] * 3
    assert [it.source for it in items[:3]] == ["A", "B", "A"]


def test_same_seed_gives_identical_images_and_other_seed_differs() -> None:
    a, _, _ = _stack(2, 32, seed=7)
    b, _, _ = _stack(2, 32, seed=7)
    c, _, _ = _stack(2, 32, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_reproduces_one_image_of_generate() -> None:
    items = list(generate(4, 32, ("A", "B"), seed=3))
    third_neutrophil = [it for it in items if it.class_name == "neutrophil"][3]
    assert third_neutrophil.source == "B"
    assert np.array_equal(render("neutrophil", 3, 32, "B", seed=3), third_neutrophil.image)


def test_class_mean_images_differ() -> None:
    x, y, _ = _stack(12, 32, seed=0)
    means = np.stack([x[y == k].astype(np.float64).mean(axis=0) for k in range(8)])
    dists = [np.abs(means[i] - means[j]).mean() for i in range(8) for j in range(i + 1, 8)]
    assert min(dists) > 4.0  # every pair of class means differs by > 4 grey levels per pixel on average


def test_nearest_centroid_is_well_above_chance_on_fresh_images() -> None:
    """A weak linear-ish classifier already beats chance (1/8) by far: the classes carry signal."""
    xtr, ytr, _ = _stack(20, 16, seed=0)
    xte, yte, _ = _stack(10, 16, seed=1)
    ftr = xtr.reshape(len(xtr), -1).astype(np.float64)
    fte = xte.reshape(len(xte), -1).astype(np.float64)
    centroids = np.stack([ftr[ytr == k].mean(axis=0) for k in range(8)])
    pred = np.argmin(((fte[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert (pred == yte).mean() > 0.35


def _cell_pixels(img: np.ndarray) -> int:
    """Pixels clearly darker / bluer than plasma and red cells (nuclei, cytoplasm, granules)."""
    f = img.astype(np.int32)
    return int(((f[..., 2] > f[..., 0] - 5) & (f.sum(axis=2) < 600)).sum())


def test_platelets_are_small_and_monocytes_large() -> None:
    sizes = {
        c: np.mean([_cell_pixels(render(c, i, 64, "A", 0)) for i in range(8)])
        for c in ("platelet", "lymphocyte", "monocyte")
    }
    assert sizes["platelet"] * 3 < sizes["lymphocyte"] < sizes["monocyte"]


def test_source_changes_the_stain_cast() -> None:
    a = np.stack([render(c, i, 32, "A", 0) for c in CLASSES for i in range(3)]).astype(np.float64)
    b = np.stack([render(c, i, 32, "B", 0) for c in CLASSES for i in range(3)]).astype(np.float64)
    sat_a = (a.max(axis=3) - a.min(axis=3)).mean()
    sat_b = (b.max(axis=3) - b.min(axis=3)).mean()
    assert sat_b < sat_a * 0.9  # preset B is washed out
    assert np.abs(a.mean(axis=(0, 1, 2)) - b.mean(axis=(0, 1, 2))).max() > 3.0
    assert stain_for("Z") == stain_for("Z") and stain_for("Z") != stain_for("A")


def test_write_image_folder_writes_pngs_per_class(tmp_path: Path) -> None:
    counts = write_image_folder(tmp_path / "syn", 2, image_size=24, sources=("A", "B"), seed=0)
    assert counts == dict.fromkeys(CLASSES, 2)
    files = sorted(p.relative_to(tmp_path / "syn").as_posix() for p in (tmp_path / "syn").rglob("*.png"))
    assert len(files) == 16
    assert "platelet/B-00001.png" in files
    with Image.open(tmp_path / "syn" / "ig" / "A-00000.png") as im:
        assert im.size == (24, 24) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), render("ig", 0, 24, "A", 0))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        render("dragon", 0)
    with pytest.raises(ValueError, match="duplicate"):
        list(generate(1, 16, ("A", "A")))
    with pytest.raises(ValueError):
        list(synthetic.generate(-1))
