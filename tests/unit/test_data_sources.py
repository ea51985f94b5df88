"""Dataset sources: image folders, npz, synthetic, spec parsing, class mapping, BloodMNIST download."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemafed.data.sources import (
    BLOODMNIST_CLASSES,
    DatasetError,
    ImageFolderSource,
    NpzSource,
    SyntheticSource,
    apply_class_mapping,
    bloodmnist_npz,
    load_class_mapping,
    load_dataset,
    parse_dataset_spec,
)
from hemafed.data.testing import make_image_folder, write_truncated_jpeg


def _npz(path: Path, n: dict[str, int], size: int = 8, grey: bool = False) -> Path:
    """Tiny MedMNIST-style npz; image i of a split has all pixels = 10*i + label."""
    arrays = {}
    for split, count in n.items():
        labels = (np.arange(count) % 8).astype(np.uint8).reshape(-1, 1)
        shape = (count, size, size) if grey else (count, size, size, 3)
        imgs = np.zeros(shape, dtype=np.uint8)
        for i in range(count):
            imgs[i] = 10 * i + labels[i, 0]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels
    np.savez_compressed(path, **arrays)
    return path


# --------------------------------------------------------------------------- folder


def test_folder_source_lists_images_and_skips_bad_files(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "lab", {"basophil": 3, "platelet": 2}, corrupt=1, non_image=1)
    Image.new("RGB", (9, 9)).save(root / "platelet" / "UPPER.PNG")
    Image.new("RGB", (9, 9)).save(root / "platelet" / "x.JPEG")
    write_truncated_jpeg(root / "basophil" / "cut.jpg")
    (root / "basophil" / ".DS_Store").write_bytes(b"junk")
    res = ImageFolderSource(root).scan()
    assert {r.uid for r in res.records if r.label == "platelet"} == {
        "platelet/img_0000.png",
        "platelet/img_0001.png",
        "platelet/UPPER.PNG",
        "platelet/x.JPEG",
    }
    assert len(res.records) == 7
    assert all(r.source == "lab" and r.path is not None for r in res.records)
    assert sorted((s.file, s.reason) for s in res.skipped) == [
        ("basophil/cut.jpg", "corrupt"),
        ("basophil/img_corrupt_0.jpg", "corrupt"),
        ("basophil/img_notes_0.txt", "not_image"),
    ]


def test_folder_source_without_check_keeps_corrupt_files(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "lab", {"ig": 2}, corrupt=1)
    assert len(ImageFolderSource(root).scan(check_images=False).records) == 3


def test_record_write_copies_original_bytes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "lab", {"ig": 1}, fmt="jpg")
    rec = ImageFolderSource(root, name="pbc").scan().records[0]
    rec.write_to(tmp_path / "copy.jpg")
    assert (tmp_path / "copy.jpg").read_bytes() == (root / "ig" / "img_0000.jpg").read_bytes()
    assert rec.output_name() == "pbc__ig__img_0000.jpg"
    assert rec.load_array(4).shape == (4, 4, 3)


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_pools_splits_and_writes_png(tmp_path: Path) -> None:
    path = _npz(tmp_path / "bloodmnist_64.npz", {"train": 10, "val": 3, "test": 4})
    src = NpzSource(path)
    assert src.name == "bloodmnist_64"
    recs = src.scan().records
    assert len(recs) == 17
    assert [r.uid for r in recs[:2]] == ["train-000000", "train-000001"]
    assert recs[9].label == BLOODMNIST_CLASSES[9 % 8] == "eosinophil"
    assert recs[12].uid == "val-000002" and recs[12].label == "erythroblast"
    assert np.all(recs[5].load_array() == 10 * 5 + 5)
    out = tmp_path / recs[5].output_name()
    assert out.name == "bloodmnist_64__train-000005.png"
    recs[5].write_to(out)
    with Image.open(out) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), recs[5].load_array())


def test_npz_greyscale_becomes_rgb(tmp_path: Path) -> None:
    recs = NpzSource(_npz(tmp_path / "g.npz", {"test": 2}, grey=True)).scan().records
    arr = recs[1].load_array()
    assert arr.shape == (8, 8, 3) and np.all(arr == 11)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"foo": np.zeros(3)}, "no train_/val_/test_"),
        ({"train_images": np.zeros((2, 4, 4, 3), np.uint8)}, "must both be present"),
        (
            {"train_images": np.zeros((2, 4, 4, 3), np.uint8), "train_labels": np.array([[0], [8]])},
            "outside 0..7",
        ),
        ({"train_images": np.zeros((2, 4, 4, 3), np.float32), "train_labels": np.array([[0], [1]])}, "uint8"),
        (
            {"train_images": np.zeros((2, 4, 4, 3), np.uint8), "train_labels": np.array([[0], [1], [2]])},
            "matching",
        ),
    ],
)
def test_npz_validation_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        NpzSource(path).scan()


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, train_images=np.array([object()], dtype=object), train_labels=np.array([0]))
    with pytest.raises(DatasetError, match="cannot read"):
        NpzSource(path).scan()


def test_npz_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("nope")
    with pytest.raises(DatasetError, match="cannot read"):
        NpzSource(tmp_path / "x.npz").scan()


# --------------------------------------------------------------------------- synthetic & spec


def test_synthetic_source_names_and_lazy_records() -> None:
    src = SyntheticSource(stains=("A", "B"), per_class=3, image_size=16, seed=0)
    recs = src.scan().records
    assert src.source_names() == ["synthetic-A", "synthetic-B"]
    assert len(recs) == 24
    assert [r.source for r in recs[:3]] == ["synthetic-A", "synthetic-B", "synthetic-A"]
    assert recs[0].output_name() == "synthetic-A__basophil-00000.png"
    assert recs[0].load_array().shape == (16, 16, 3)


def test_spec_names_kinds_and_order(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "a", {"ig": 1})
    npz = _npz(tmp_path / "b.npz", {"test": 1})
    sources = parse_dataset_spec(f"pbc={tmp_path / 'a'}, {npz} ,lab=synthetic:A+C")
    assert [(s.kind, s.source_names()) for s in sources] == [
        ("folder", ["pbc"]),
        ("npz", ["b"]),
        ("synthetic", ["lab-A", "lab-C"]),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/does/not/exist", "not found"),
        ("", "empty"),
        ("synthetic,synthetic", "duplicate source name"),
        ("synthetic:A+", "stains"),
        ("bloodmnist:33", "size must be one of"),
        ("bad name=synthetic", "bad source name"),
    ],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_dataset_spec(spec)


def test_spec_rejects_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(DatasetError, match="unsupported dataset"):
        parse_dataset_spec(str(tmp_path / "data.csv"))


# --------------------------------------------------------------------------- class mapping


def test_mapping_merges_two_sources(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "pbc", {"neutrophil": 2, "ig": 2}, prefix="same")
    make_image_folder(tmp_path / "bccd", {"NEUTROPHIL": 3, "LYMPHOCYTE": 1, "smudge": 2}, prefix="same")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("NEUTROPHIL: neutrophil\nLYMPHOCYTE: lymphocyte\nsmudge: null\nbccd:ig: ig\ntypo: x\n")
    ds = load_dataset(f"{tmp_path / 'pbc'},{tmp_path / 'bccd'}", mapping=mapping)
    assert ds.classes == ["ig", "lymphocyte", "neutrophil"]  # unmapped 'ig' kept as is
    counts = {(r.source, r.label) for r in ds.records}
    assert counts == {("pbc", "neutrophil"), ("pbc", "ig"), ("bccd", "neutrophil"), ("bccd", "lymphocyte")}
    assert sum(1 for r in ds.records if r.label == "neutrophil") == 5
    assert [s.reason for s in ds.skipped] == ["dropped_by_mapping"] * 2
    assert ds.unused_mapping_keys == ["bccd:ig", "typo"]
    names = [r.output_name() for r in ds.records]
    assert len(set(names)) == len(names)  # same file names in both folders do not collide


def test_source_specific_mapping_key_wins() -> None:
    from hemafed.data.sources import Record

    recs = [Record("1", "seg", "a"), Record("2", "seg", "b")]
    kept, dropped, unused = apply_class_mapping(recs, {"seg": "neutrophil", "b:seg": None})
    assert [(r.source, r.label, r.original_label) for r in kept] == [("a", "neutrophil", "seg")]
    assert [(d.source, d.reason) for d in dropped] == [("b", "dropped_by_mapping")]
    assert unused == []


def test_mapping_json_and_errors(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"a": "b", "c": None}))
    assert load_class_mapping(tmp_path / "m.json") == {"a": "b", "c": None}
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DatasetError, match="flat"):
        load_class_mapping(tmp_path / "list.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetError, match="cannot parse"):
        load_class_mapping(tmp_path / "broken.json")
    with pytest.raises(DatasetError, match="not found"):
        load_class_mapping(tmp_path / "missing.yaml")


def test_dataset_with_nothing_usable_fails(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d", {"ig": 0}, corrupt=1)
    with pytest.raises(DatasetError, match="no usable images"):
        load_dataset(str(tmp_path / "d"))


# --------------------------------------------------------------------------- bloodmnist (never online)


def test_bloodmnist_without_medmnist_says_pass_a_local_npz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "medmnist", None)  # import medmnist -> ImportError
    with pytest.raises(DatasetError, match=r"not installed.*local \.npz"):
        bloodmnist_npz(64, cache_dir=tmp_path)


def test_bloodmnist_download_failure_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(**kwargs: object) -> None:
        raise RuntimeError("Something went wrong when downloading!\nmore lines")

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(BloodMNIST=fail))
    with pytest.raises(DatasetError, match=r"download failed \(RuntimeError: Something went wrong") as err:
        parse_dataset_spec("bloodmnist:64", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "local .npz" in str(err.value)


def test_bloodmnist_download_through_medmnist_then_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []

    def fake(**kwargs: object) -> None:
        calls.append(kwargs)
        _npz(Path(str(kwargs["root"])) / "bloodmnist_64.npz", {"train": 3})

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(BloodMNIST=fake))
    (src,) = parse_dataset_spec("bloodmnist:64", cache_dir=tmp_path / "cache")
    assert src.name == "bloodmnist_64" and len(src.scan().records) == 3
    assert calls == [{"split": "test", "download": True, "root": str(tmp_path / "cache"), "size": 64}]
    monkeypatch.setitem(sys.modules, "medmnist", None)  # cached file: medmnist no longer needed
    assert bloodmnist_npz(64, tmp_path / "cache") == tmp_path / "cache" / "bloodmnist_64.npz"
