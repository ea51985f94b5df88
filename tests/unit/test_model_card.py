"""The run's export for use outside HemaFed: a TF SavedModel that computes what best.keras does,
and a model card (JSON + Markdown) with classes, input size, preprocessing, per-hospital data,
test figures, strategy and DP settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemafed import __version__
from hemafed.schemas import TaskSpec
from hemafed_aggregator import modelops
from hemafed_aggregator.inference import RunModel
from hemafed_aggregator.modelcard import CARD_SCHEMA, export_run
from hemafed_aggregator.server import RunState
from hemafed_aggregator.settings import RunConfig

CLASSES = ["basophil", "lymphocyte", "neutrophil"]
SIZE = 16
HOSPITAL_DATA = {
    "hospital-2": {"classes": {"basophil": 0, "lymphocyte": 7, "neutrophil": 3}, "num_train": 8, "num_val": 2,
                   "skipped_files": 1},
    "hospital-1": {"classes": {"basophil": 5, "lymphocyte": 5, "neutrophil": 5}, "num_train": 12, "num_val": 3,
                   "skipped_files": 0},
}
TEST = {"num_examples": 30, "loss": 0.91, "accuracy": 0.7, "macro_precision": 0.71, "macro_recall": 0.69,
        "macro_f1": 0.68, "skipped_files": 2, "classes": CLASSES, "confusion_matrix": [[1, 0, 0]] * 3,
        "per_class": {c: {"precision": 0.5 + i / 10, "recall": 0.6, "f1": 0.55, "specificity": 0.9,
                          "support": 10} for i, c in enumerate(CLASSES)}}
STRATEGY = {"name": "dp_fedavg", "fraction_fit": 1.0, "min_fit_clients": 2, "noise_multiplier": 1.1,
            "clip_norm": 0.5, "delta": 1e-5, "sampling_probability": 1.0}


@pytest.fixture(scope="module")
def task() -> TaskSpec:
    return TaskSpec(model="cnn", image_size=SIZE, classes=CLASSES, seed=2)


def _run_dir(tmp_path: Path, task: TaskSpec) -> Path:
    run_dir = tmp_path / "card-run"
    modelops.save_keras(task, modelops.initial_weights(task)[0], run_dir / "best.keras",
                        {"run_id": "card-run", "best_round": 2, "rounds": 3, "kind": "best"})
    return run_dir


def _state(test_results=TEST) -> RunState:
    st = RunState(run_id="card-run", rounds_total=3, status="evaluating", round=3, best_round=2,
                  best_val_accuracy=0.66, test_results=test_results, classes=CLASSES)
    st.rounds = [{"round": r, "report": {"dp_epsilon": 0.5 * r, "dp_delta": 1e-5}} for r in (1, 2, 3)]
    return st


def _run_cfg(**kw) -> RunConfig:
    return RunConfig(run_id="card-run", rounds=3, strategy="dp_fedavg", local_epochs=2, batch_size=8,
                     learning_rate=0.002, split="noniid", dataset="pbc-128", seed=5, **kw)


def test_export_writes_a_saved_model_that_matches_the_keras_model(tmp_path, task):
    import tensorflow as tf

    run_dir = _run_dir(tmp_path, task)
    card = export_run(run_dir, run=_run_cfg(), task=task, state=_state(), hospital_data=HOSPITAL_DATA,
                      strategy=STRATEGY)
    assert card is not None
    assert (run_dir / "saved_model" / "saved_model.pb").is_file()
    assert card["files"] == {"keras": "best.keras", "keras_metadata": "best.json", "saved_model": {
        "path": "saved_model", "endpoint": "serve", "signature": "serving_default",
        "input": {"shape": [None, SIZE, SIZE, 3], "dtype": "float32", "range": [0, 255]},
        "output": {"shape": [None, 3], "dtype": "float32", "kind": "softmax"}}}
    images = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    expected = RunModel.load(run_dir / "best.keras").probabilities(images)
    loaded = tf.saved_model.load(str(run_dir / "saved_model"))
    got = loaded.serve(tf.constant(images, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    sig = loaded.signatures["serving_default"]
    assert sig.structured_input_signature[1] and list(sig.structured_outputs.values())[0].shape[-1] == 3


def test_the_card_holds_every_fact_of_the_run(tmp_path, task):
    run_dir = _run_dir(tmp_path, task)
    export_run(run_dir, run=_run_cfg(dp_clip_norm=1.0, dp_noise_multiplier=0.8, dp_delta=1e-6), task=task,
               state=_state(), hospital_data=HOSPITAL_DATA, strategy=STRATEGY)
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["schema"] == CARD_SCHEMA and card["run_id"] == "card-run"
    assert card["hemafed_version"] == __version__
    assert card["classes"] == CLASSES and card["image_size"] == SIZE
    assert card["model"]["architecture"] == "cnn"
    assert card["model"]["input"] == {"shape": [SIZE, SIZE, 3], "color": "RGB", "dtype": "float32",
                                      "range": [0, 255]}
    assert card["model"]["output"] == {"kind": "softmax probabilities", "size": 3, "order": "classes"}
    pre = card["preprocessing"]
    assert pre["inside_the_model"] == "Rescaling(1/255) to [0, 1]"
    assert any(f"resize to {SIZE} x {SIZE} pixels with bilinear" in s for s in pre["outside_the_model"])
    assert pre["reference_implementation"] == "hemafed.data.imagefiles.decode_rgb(path, image_size)"
    assert card["selection"]["best_round"] == 2 and card["selection"]["best_val_accuracy_median"] == 0.66
    fed = card["training"]["federated"]
    assert fed["strategy"] == STRATEGY and fed["rounds_completed"] == 3 and fed["hospitals"] == 2
    assert (fed["rounds"], fed["local_epochs"], fed["batch_size"], fed["learning_rate"]) == (3, 2, 8, 0.002)
    assert (fed["split"], fed["dataset"], fed["seed"]) == ("noniid", "pbc-128", 5)
    data = card["training"]["data"]
    assert list(data["hospitals"]) == ["hospital-1", "hospital-2"]
    assert data["hospitals"]["hospital-2"] == HOSPITAL_DATA["hospital-2"]
    assert data["totals"] == {"num_train": 20, "num_val": 5, "skipped_files": 1,
                              "classes": {"basophil": 5, "lymphocyte": 12, "neutrophil": 8}}
    test = card["evaluation"]["test"]
    assert {k: test[k] for k in ("accuracy", "macro_f1", "num_examples", "loss", "skipped_files")} == {
        "accuracy": 0.7, "macro_f1": 0.68, "num_examples": 30, "loss": 0.91, "skipped_files": 2}
    assert test["per_class"] == TEST["per_class"] and "confusion_matrix" not in test
    dp = card["privacy"]
    assert dp["sample_level_dp_sgd"]["enabled"] is True
    assert (dp["sample_level_dp_sgd"]["clip_norm"], dp["sample_level_dp_sgd"]["noise_multiplier"],
            dp["sample_level_dp_sgd"]["delta"]) == (1.0, 0.8, 1e-6)
    assert dp["client_level"] == {"enabled": True, "strategy": "dp_fedavg", "noise_multiplier": 1.1,
                                  "clip_norm": 0.5, "delta": 1e-5, "sampling_probability": 1.0,
                                  "epsilon": 1.5, "epsilon_delta": 1e-5}

    md = (run_dir / "model_card.md").read_text()
    assert md.startswith("# Model card: HemaFed cnn peripheral-blood-cell classifier")
    assert "0 `basophil`, 1 `lymphocyte`, 2 `neutrophil`" in md
    assert "| hospital | train | val | skipped | basophil | lymphocyte | neutrophil |" in md
    assert "| hospital-2 | 8 | 2 | 1 | 0 | 7 | 3 |" in md
    assert "| **total** | 20 | 5 | 1 | 5 | 12 | 8 |" in md
    assert "accuracy 0.7000" in md and "macro_f1 0.6800" in md
    assert "| neutrophil | 0.7000 | 0.6000 | 0.5500 | 0.9000 | 10 |" in md
    assert "sample-level DP-SGD at the hospitals: on (clip norm 1.0, noise multiplier 0.8, delta 1e-06)" in md
    assert "client-level DP at the aggregator: on (strategy `dp_fedavg`" in md and "epsilon 1.500" in md
    assert "`saved_model/` (TF SavedModel, endpoint `serve`" in md
    assert "best round: 2 (median validation accuracy 0.6600)" in md
    assert "test_time_augmentation" not in test and "test-time augmentation" not in md


def test_a_test_time_augmented_score_says_so_with_the_single_view_figures(tmp_path, task):
    run_dir = _run_dir(tmp_path, task)
    tta = {"views": 8, "kind": "mean softmax", "single_view": {"accuracy": 0.65, "macro_f1": 0.6, "loss": 0.95}}
    export_run(run_dir, run=_run_cfg(), task=task, state=_state({**TEST, "test_time_augmentation": tta}), hospital_data=HOSPITAL_DATA, strategy=STRATEGY)
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["evaluation"]["test"]["test_time_augmentation"] == tta
    assert card["evaluation"]["test"]["accuracy"] == 0.7
    md = (run_dir / "model_card.md").read_text()
    assert ("test-time augmentation: the mean over 8 views of each test image. One view (the image as it is): "
            "accuracy 0.6500, macro_f1 0.6000.") in md


def test_no_test_set_and_no_dp_are_said_plainly(tmp_path, task):
    run_dir = _run_dir(tmp_path, task)
    st = _state(test_results=None)
    st.rounds = [{"round": 1, "report": {}}]
    card = export_run(run_dir, run=_run_cfg(), task=task, state=st, hospital_data=HOSPITAL_DATA,
                      strategy={"name": "fedavg", "fraction_fit": 1.0, "min_fit_clients": 2})
    assert card["evaluation"]["test"] is None
    assert card["privacy"]["sample_level_dp_sgd"]["enabled"] is False
    assert card["privacy"]["client_level"] == {"enabled": False, "strategy": "fedavg", "epsilon": None,
                                               "epsilon_delta": None}
    md = (run_dir / "model_card.md").read_text()
    assert "No test set was mounted: the model was not scored on held-out data." in md
    assert "sample-level DP-SGD at the hospitals: off" in md
    assert "client-level DP at the aggregator: off (strategy `fedavg`)." in md


def test_an_export_failure_is_recorded_not_raised(tmp_path, task):
    run_dir = tmp_path / "no-model"
    run_dir.mkdir()
    card = export_run(run_dir, run=_run_cfg(), task=task, state=_state(), hospital_data={}, strategy=STRATEGY)
    assert card["files"]["saved_model"] is None
    assert card["files"]["saved_model_error"] == f"FileNotFoundError: best.keras not found in {run_dir}"
    assert not (run_dir / "saved_model").exists()
    assert json.loads((run_dir / "model_card.json").read_text())["files"]["saved_model"] is None
    assert "no SavedModel (" in (run_dir / "model_card.md").read_text()
