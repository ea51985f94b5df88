"""Run-time loader of a hospital's image folder, and the local stratified split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemafed.data.loader import LoadedImages, load_image_folder, random_split, stratified_split, validation_split
from hemafed.data.testing import make_image_folder, solid_image, write_corrupt_jpeg, write_truncated_jpeg

PBC_RAW_SAMPLE = Path("/work/shared/data/pbc-raw-sample")


def _mixed_modes_folder(root: Path) -> Path:
    """One class, one image per PIL mode / format / size."""
    d = root / "ig"
    d.mkdir(parents=True)
    solid_image((10, 200, 30), (40, 30)).save(d / "rgb.png")
    Image.new("L", (17, 23), 128).save(d / "grey.bmp")
    Image.new("RGBA", (12, 12), (0, 0, 0, 0)).save(d / "transparent.png")
    Image.new("P", (50, 50), 3).save(d / "palette.png")
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(d / "sixteen.tif")
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    solid_image((0, 0, 255), (300, 280)).save(d / "big.JPEG")
    return root


def test_resize_and_rgb_conversion_of_any_mode(tmp_path: Path) -> None:
    data = load_image_folder(_mixed_modes_folder(tmp_path / "d"), 8)
    assert data.images.shape == (7, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0] * 7
    assert data.classes == ["ig"] and data.skipped == 0
    # files are loaded in name order: big, cmyk, grey, palette, rgb, sixteen, transparent
    big, cmyk, grey, _, rgb, sixteen, transparent = data.images
    assert np.abs(big.astype(int) - [0, 0, 255]).max() <= 12
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1:].mean() < 60  # CMYK (0,255,255,0) is red
    assert np.all(grey == 128)
    assert np.abs(rgb.astype(int) - [10, 200, 30]).max() <= 3
    assert np.all(sixteen == 255)
    assert np.all(transparent == 255)  # transparent pixels composited on white


def test_skip_counts_and_reasons(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"basophil": 3, "ig": 2, "unknown": 4}, corrupt=1, non_image=1)
    write_truncated_jpeg(root / "ig" / "cut.jpg")
    write_corrupt_jpeg(root / "ig" / "garbage.PNG")
    (root / "ig" / ".hidden.jpg").write_bytes(b"ignored silently")
    solid_image((1, 2, 3)).save(root / "loose.png")  # no class folder
    data = load_image_folder(root, 16, classes=["basophil", "ig", "platelet"])
    assert len(data) == 5
    assert data.class_counts() == {"basophil": 3, "ig": 2, "platelet": 0}
    assert data.skipped_reasons == {"corrupt": 3, "no_class_folder": 1, "not_image": 1, "unknown_class": 4}
    assert data.skipped == 9


def test_classes_order_defines_labels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 3})
    data = load_image_folder(root, 4, classes=["b", "a"])
    assert data.classes == ["b", "a"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    default = load_image_folder(root, 4)
    assert default.classes == ["a", "b"] and default.labels.tolist() == [0, 0, 1, 1, 1]


def test_no_file_names_in_the_result(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"ig": 2}, prefix="patient_smith", corrupt=1)
    data = load_image_folder(root, 4)
    assert {f.name for f in dataclasses.fields(LoadedImages)} == {
        "images",
        "labels",
        "classes",
        "skipped",
        "skipped_reasons",
    }
    text = repr((data.classes, data.skipped, data.skipped_reasons, data.class_counts()))
    assert "patient_smith" not in text and ".jpg" not in text and ".png" not in text


def test_thread_pool_gives_the_same_result(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 40, "b": 35}, corrupt=2)
    one = load_image_folder(root, 6, workers=1)
    many = load_image_folder(root, 6, workers=3)
    assert np.array_equal(one.images, many.images) and np.array_equal(one.labels, many.labels)
    assert one.skipped_reasons == many.skipped_reasons == {"corrupt": 2}


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "ig").mkdir(parents=True)
    data = load_image_folder(tmp_path / "empty", 8)
    assert data.images.shape == (0, 8, 8, 3) and data.labels.shape == (0,) and data.classes == ["ig"]
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "nope", 8)
    with pytest.raises(ValueError, match="duplicates"):
        load_image_folder(tmp_path / "empty", 8, classes=["ig", "ig"])


# --------------------------------------------------------------------------- stratified_split


def test_stratified_split_is_deterministic_disjoint_and_covers_every_class() -> None:
    labels = np.array([0] * 50 + [1] * 10 + [2] * 2 + [3] * 1)
    train, val = stratified_split(labels, 0.2, seed=3)
    train2, val2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=4)[1])
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 2, 1, 0]  # >=1 for classes with >=2
    assert train.dtype == val.dtype == np.int64


def test_stratified_split_edge_cases() -> None:
    train, val = stratified_split([0, 0, 1, 1], 0.0, seed=0)
    assert val.size == 0 and train.tolist() == [0, 1, 2, 3]
    train, val = stratified_split([0, 0, 0], 0.9, seed=0)
    assert len(val) == 2 and len(train) == 1  # never the last image of a class
    with pytest.raises(ValueError):
        stratified_split([0, 1], 1.0, seed=0)


def test_random_split_holds_out_the_rounded_share_ignoring_classes() -> None:
    # a 12-image site with 8 classes: the per-class rule keeps 4 of 12 (one of each class held
    # twice) and never the 4 classes held once; drawn uniformly: round(12 x 0.15) = 2 images
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7])
    assert len(stratified_split(labels, 0.15, seed=0)[1]) == 4
    train, val = random_split(labels, 0.15, seed=0)
    assert len(val) == 2 and len(train) == 10 and train.dtype == val.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(12))
    again = random_split(labels, 0.15, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    # sites with the same label list (a stratified IID cut) draw independently by their key
    draws = {tuple(random_split(labels, 0.15, seed=0, key=f"hospital-{i}")[1]) for i in range(1, 41)}
    assert len(draws) > 20
    assert np.array_equal(random_split(labels, 0.15, seed=0, key="hospital-1")[1],
                          random_split(labels, 0.15, seed=0, key="hospital-1")[1])
    # over seeds every image, of every class, is sometimes held out
    held = np.zeros(12, bool)
    for seed in range(200):
        held[random_split(labels, 0.15, seed=seed)[1]] = True
    assert held.all()
    # at least one image when n >= 2, never the last; none from a single image or at fraction 0
    assert [len(random_split(np.zeros(n, int), 0.01, seed=0)[1]) for n in (1, 2, 3, 100)] == [0, 1, 1, 1]
    assert len(random_split(np.zeros(3, int), 0.9, seed=0)[0]) == 1
    assert len(random_split(np.zeros(5, int), 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError):
        random_split([0, 1], 1.0, seed=0)


def test_validation_split_dispatches_by_method() -> None:
    labels = np.array([0] * 50 + [1] * 10 + [2] * 2 + [3] * 1)
    for method, split in (("stratified", stratified_split), ("random", random_split)):
        got = validation_split(labels, 0.2, 3, method, key="h")
        want = split(labels, 0.2, 3, "h") if method == "random" else split(labels, 0.2, 3)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # the default is stratified, and the stratified split ignores the key (the measured splits stay)
    assert np.array_equal(validation_split(labels, 0.2, 3, key="x")[1], stratified_split(labels, 0.2, seed=3)[1])
    with pytest.raises(ValueError, match="unknown validation split 'by_site'; choose one of stratified, random"):
        validation_split(labels, 0.2, 3, "by_site")


# --------------------------------------------------------------------------- optional real data


def test_real_pbc_raw_sample_loads_at_32_px() -> None:
    if not PBC_RAW_SAMPLE.is_dir():
        pytest.skip(f"real PBC sample not available at {PBC_RAW_SAMPLE} (optional shared data folder)")
    data = load_image_folder(PBC_RAW_SAMPLE, 32)
    assert data.images.shape == (200, 32, 32, 3)
    assert data.class_counts() == dict.fromkeys(
        ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"],
        25,
    )
    assert data.skipped == 0
    assert 100 < data.images.mean() < 250  # real, non-blank pixels
