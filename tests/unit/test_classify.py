"""The batch classifier: a folder of images (nested, with junk and corrupt files) into a CSV with
the saved model's top-2 classes; bad files are skipped and counted, never fatal."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemafed.data.imagefiles import decode_rgb
from hemafed.data.synthetic import write_image_folder
from hemafed.schemas import TaskSpec
from hemafed_aggregator import modelops
from hemafed_aggregator.classify import COLUMNS, main
from hemafed_aggregator.inference import RunModel

CLASSES = ["erythroblast", "lymphocyte", "neutrophil"]
SIZE = 16


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "best.keras"
    task = TaskSpec(model="cnn", image_size=SIZE, classes=CLASSES, seed=1)
    modelops.save_keras(task, modelops.initial_weights(task)[0], out,
                        {"run_id": "cls-run", "best_round": 3, "rounds": 4, "kind": "best"})
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Nested folders of real (synthetic) images plus a corrupt JPEG, a text file and a hidden file."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root / "batch-a", 1, image_size=24, seed=4)  # batch-a/<class>/<file> (8 images)
    (root / "top.png").write_bytes((next((root / "batch-a").rglob("*.png"))).read_bytes())
    (root / "batch-a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_a_folder_becomes_a_csv_of_top2_classes(model_path, images, tmp_path, capsys):
    out = tmp_path / "preds" / "predictions.csv"
    rc = main(["--model", str(model_path), "--images", str(images), "--out", str(out), "--batch-size", "3"])
    assert rc == 0
    rows = _rows(out)
    good = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert len(good) == 9
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)  # walk order: sorted
    assert sorted(r["file"] for r in rows) == good
    model = RunModel.load(model_path)
    probs = model.probabilities(np.stack([decode_rgb(images / r["file"], SIZE) for r in rows]))
    for r, p in zip(rows, probs):
        order = np.argsort(-p, kind="stable")
        assert r["top1_class"] == CLASSES[order[0]] and r["top2_class"] == CLASSES[order[1]]
        assert float(r["top1_score"]) == pytest.approx(p[order[0]], abs=1e-6)
        assert float(r["top2_score"]) == pytest.approx(p[order[1]], abs=1e-6)
        assert 1.0 >= float(r["top1_score"]) >= float(r["top2_score"]) >= 0.0
    err = capsys.readouterr().err
    assert "skipped batch-a/broken.jpg: corrupt" in err
    assert "skipped notes.txt: not_image" in err
    assert ".DS_Store" not in err
    assert "classified 9 image(s) into" in err and "(run cls-run, round 3)" in err
    assert "skipped 2 (corrupt 1, not_image 1)" in err


def test_class_names_without_metadata_come_from_the_command_line(model_path, images, tmp_path, capsys):
    bare = tmp_path / "bare.keras"
    shutil.copy(model_path, bare)  # no bare.json next to it
    out = tmp_path / "p.csv"
    rc = main(["--model", str(bare), "--images", str(images), "--out", str(out)])
    assert rc == 2 and "no metadata bare.json next to bare.keras: pass the class names" in capsys.readouterr().err
    rc = main(["--model", str(bare), "--images", str(images), "--out", str(out), "--classes", "x,y"])
    assert rc == 2 and "bare.keras has 3 outputs but 2 class names were given" in capsys.readouterr().err
    rc = main(["--model", str(bare), "--images", str(images), "--out", str(out), "--classes", "p, q ,r"])
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 9 and {r["top1_class"] for r in rows} <= {"p", "q", "r"}
    assert "(run ?, round ?)" in capsys.readouterr().err


def test_bad_arguments_and_folders_without_images(model_path, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["--model", str(tmp_path / "none.keras"), "--images", str(tmp_path), "--out", str(out)]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["--model", str(model_path), "--images", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "image folder not found" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"garbage")
    (junk / "b.tif").write_bytes(b"")
    assert main(["--model", str(model_path), "--images", str(junk), "--out", str(out)]) == 1  # all skipped
    assert _rows(out) == []
    assert "classified 0 image(s)" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(model_path), "--images", str(empty), "--out", str(out)]) == 0
    assert _rows(out) == []
    with pytest.raises(SystemExit):
        main(["--model", str(model_path), "--images", str(empty), "--batch-size", "0"])
