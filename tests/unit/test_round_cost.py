"""benchmarks/round_cost.py: the rows it prints follow from what each kind of round trains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("round_cost", ROOT / "benchmarks" / "round_cost.py")
round_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(round_cost)


def test_each_kind_of_round_uploads_what_it_trained():
    from hemafed.models import build_model, get_exchanged
    from hemafed.training import classifier_mask

    rows = {r["kind"]: r for r in round_cost.measure("cnn", 16, 3, images=24, batch_size=8, repeat=1)}
    assert list(rows) == ["plain", "fedbabu", "classifier"]
    model = build_model("cnn", 3, 16, seed=0)
    heads = classifier_mask(model)
    weights = get_exchanged(model)
    head_bytes = sum(w.nbytes for w, h in zip(weights, heads) if h)
    all_bytes = sum(w.nbytes for w in weights)
    for r in rows.values():
        assert r["steps"] == 3 and r["seconds"] > 0 and r["images_per_second"] == pytest.approx(24 / r["seconds"])
        assert r["tensors"] == len(weights) and r["whole_bytes"] > all_bytes
    assert rows["plain"]["tensors_sent"] == len(weights)
    assert rows["classifier"]["tensors_sent"] == sum(heads)
    assert rows["fedbabu"]["tensors_sent"] == len(weights) - sum(heads)
    # safetensors header + metadata on top of the tensors' bytes, a few kB at most
    assert 0 < rows["classifier"]["upload_bytes"] - head_bytes < 4096
    assert 0 < rows["fedbabu"]["upload_bytes"] - (all_bytes - head_bytes) < 4096
    assert 0 < rows["plain"]["upload_bytes"] - all_bytes < 4096
    # the next request refers to what the hospital holds: after a classifier round only the head goes down
    assert 0 < rows["classifier"]["download_bytes"] - head_bytes < 8192
    assert 0 < rows["fedbabu"]["download_bytes"] - (all_bytes - head_bytes) < 8192
    assert 0 < rows["plain"]["download_bytes"] - all_bytes < 4096


def test_main_prints_a_row_per_kind_and_refuses_bad_sizes(capsys):
    assert round_cost.main(["--image-size", "16", "--classes", "2", "--images", "16", "--batch-size", "8",
                            "--repeat", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("one hospital's round: cnn, 16 px, 2 classes, 16 images x 1 epoch")
    assert [line.split()[0] for line in out[2:]] == ["plain", "fedbabu", "classifier"]
    with pytest.raises(SystemExit) as e:
        round_cost.main(["--classes", "1"])
    assert e.value.code == 2


def test_epochs_and_optimizer_set_a_site_round(capsys):
    """A 1,000-site run's site: a dozen images, several epochs of small batches, Adam."""
    rows = round_cost.measure("cnn", 16, 3, images=13, batch_size=8, repeat=1, epochs=3, optimizer="adam")
    assert [r["steps"] for r in rows] == [6, 6, 6]  # 3 epochs x ceil(13 / 8) batches, every kind
    assert round_cost.main(["--image-size", "16", "--classes", "2", "--images", "13", "--batch-size", "8",
                            "--epochs", "3", "--optimizer", "adam", "--repeat", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("one hospital's round: cnn, 16 px, 2 classes, 13 images x 3 epoch(s), batch 8, adam")
    assert [line.split()[3] for line in out[2:]] == ["6", "6", "6"]
    for bad in (["--epochs", "0"], ["--optimizer", "adagrad"]):
        with pytest.raises(SystemExit) as e:
            round_cost.main(bad)
        assert e.value.code == 2
