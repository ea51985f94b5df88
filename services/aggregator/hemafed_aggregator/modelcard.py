"""The model exported for use outside HemaFed: ``results/<run>/saved_model/`` (TF SavedModel,
next to ``best.keras``) and a model card (``model_card.json`` + ``model_card.md``): classes,
input size, preprocessing, each hospital's training data (counts only), test figures, the
federated strategy and the DP settings of the run config, the best round, the HemaFed version.

:func:`export_run` is the one call ``server._finish`` makes; it never fails the run (an export
error is logged and written into the card). No TensorFlow here: the SavedModel comes from
:func:`hemafed_aggregator.modelops.export_saved_model`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hemafed import __version__
from hemafed.schemas import TaskSpec

log = logging.getLogger("hemafed.aggregator")

CARD_SCHEMA = "hemafed-model-card/1"

#: what each model does to its input itself (hemafed.models); callers feed raw 0-255 RGB
_INSIDE = {
    "cnn": "Rescaling(1/255) to [0, 1]",
    "cnn-bn": "Rescaling(1/255) to [0, 1]",
    "cnn-small": "Rescaling(1/255) to [0, 1]",
    "cnn-wide": "Rescaling(1/255) to [0, 1]",
    "cnn-deep": "Rescaling(1/255) to [0, 1]",
    "mobilenetv2": "x / 127.5 - 1 to [-1, 1] (MobileNetV2)",
    "resnet50": "RGB to BGR minus the ImageNet channel means (Keras 'caffe' mode)",
    "vgg16": "RGB to BGR minus the ImageNet channel means (Keras 'caffe' mode)",
    "efficientnetb0": "none outside the backbone (EfficientNet rescales internally)",
}

#: run-config fields of local training and participation recorded in the card (when present)
_TRAINING_FIELDS = ("rounds", "min_clients", "fraction_fit", "local_epochs", "batch_size", "learning_rate",
                    "lr_schedule", "lr_min_fraction",
                    "optimizer", "augment", "class_weighting", "trainable_fraction", "local_norm", "seed",
                    "split", "dataset", "schedule", "participation", "departed")


def preprocessing(task: TaskSpec) -> dict[str, Any]:
    s = task.image_size
    return {
        "outside_the_model": [
            "decode the file and convert it to 8-bit RGB (grey and palette images converted; transparent "
            "pixels composited onto white; 16-bit images scaled to 8 bit)",
            f"resize to {s} x {s} pixels with bilinear filtering (PIL, antialiased), whole image, no crop, "
            "aspect ratio not kept",
            "feed the 0-255 pixel values as float32, shape (N, "
            f"{s}, {s}, 3); no normalisation outside the model",
        ],
        "inside_the_model": _INSIDE.get(task.model, "see hemafed.models"),
        "reference_implementation": "hemafed.data.imagefiles.decode_rgb(path, image_size)",
    }


def hospital_summary(hospital_data: dict[str, dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Per-hospital counts (training images per class, train/val sizes, skipped files) and totals."""
    hospitals: dict[str, Any] = {}
    totals = {"num_train": 0, "num_val": 0, "skipped_files": 0, "classes": {c: 0 for c in classes}}
    for hid in sorted(hospital_data):
        d = hospital_data[hid] or {}
        counts = {str(c): int(n) for c, n in (d.get("classes") or {}).items()}
        entry = {"num_train": int(d.get("num_train") or 0), "num_val": int(d.get("num_val") or 0),
                 "skipped_files": int(d.get("skipped_files") or 0), "classes": counts}
        hospitals[hid] = entry
        for k in ("num_train", "num_val", "skipped_files"):
            totals[k] += entry[k]
        for c, n in counts.items():
            totals["classes"][c] = totals["classes"].get(c, 0) + n
    return {"hospitals": hospitals, "totals": totals,
            "note": "class counts are what each hospital reported for its local data (train + validation); "
                    "no image or file name ever left a hospital"}


def test_summary(test_results: dict[str, Any] | None) -> dict[str, Any] | None:
    """The scalar test figures and the per-class table of the best model (None: no test set)."""
    if not test_results:
        return None
    out: dict[str, Any] = {k: v for k, v in test_results.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(test_results.get("per_class"), dict):
        out["per_class"] = test_results["per_class"]
    if isinstance(test_results.get("test_time_augmentation"), dict):  # the figures are of a multi-view mean
        out["test_time_augmentation"] = test_results["test_time_augmentation"]
    return out


def privacy(run: Any, strategy: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    clip = float(getattr(run, "dp_clip_norm", 0.0) or 0.0)
    noise = float(getattr(run, "dp_noise_multiplier", 0.0) or 0.0)
    last_report = (rounds[-1].get("report") or {}) if rounds else {}
    client_level = {k: v for k, v in strategy.items() if k in ("noise_multiplier", "clip_norm", "delta",
                                                                 "sampling_probability", "expected_clients_per_round")}
    return {
        "sample_level_dp_sgd": {
            "enabled": clip > 0 and noise > 0,
            "clip_norm": clip, "noise_multiplier": noise, "delta": float(getattr(run, "dp_delta", 0.0)),
            "note": "DP-SGD at each hospital (per-example clipping + Gaussian noise); each hospital accounts "
                    "its own epsilon (its fit replies and logs)" if clip > 0 and noise > 0 else
                    "off: no per-example clipping or noise at the hospitals",
        },
        "client_level": {
            "enabled": bool(client_level) and float(client_level.get("noise_multiplier", 0) or 0) > 0,
            "strategy": strategy.get("name", ""), **client_level,
            "epsilon": last_report.get("dp_epsilon"), "epsilon_delta": last_report.get("dp_delta"),
        },
    }


#: how the best round was picked, by RunConfig.best_by
SELECTION_RULES = {
    "median": "the round with the highest median of the hospitals' validation accuracies "
              "(never chosen on the test set)",
    "pooled": "the round with the highest pooled validation accuracy, all hospitals' validation images "
              "together (never chosen on the test set)",
}


def round_global(rounds: list[dict[str, Any]], rnd: int | None) -> dict[str, Any]:
    """The global validation figures recorded for round ``rnd`` ({} when there are none)."""
    return next(((r.get("global") or {}) for r in rounds if r.get("round") == rnd), {})


def selection(run: Any, state: Any, best_round: int | None, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round, the figure it was picked by and its median of the hospitals' accuracies."""
    by = getattr(run, "best_by", "median")
    glob = round_global(rounds, best_round)
    median = glob.get("val_accuracy_median", state.best_val_accuracy if by == "median" else None)
    return {"best_round": best_round, "best_by": by, "best_val_accuracy": state.best_val_accuracy,
            "best_val_accuracy_median": median, "rule": SELECTION_RULES[by]}


def build_card(*, run: Any, task: TaskSpec, state: Any, hospital_data: dict[str, dict[str, Any]],
               strategy: dict[str, Any], saved_model: dict[str, Any] | None, saved_model_error: str | None = None,
               ) -> dict[str, Any]:
    """The model card as a JSON-able dict (``run``: the RunConfig, ``state``: the RunState)."""
    rounds = list(getattr(state, "rounds", []) or [])
    best_round = state.best_round if state.best_round is not None else len(rounds) or None
    return {
        "schema": CARD_SCHEMA,
        "name": f"HemaFed {task.model} peripheral-blood-cell classifier",
        "run_id": state.run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hemafed_version": __version__,
        "model": {
            "architecture": task.model,
            "input": {"shape": [task.image_size, task.image_size, 3], "color": "RGB", "dtype": "float32",
                      "range": [0, 255]},
            "output": {"kind": "softmax probabilities", "size": len(task.classes), "order": "classes"},
            "local_norm": task.local_norm,
        },
        "classes": list(task.classes),
        "image_size": task.image_size,
        "preprocessing": preprocessing(task),
        "files": {"keras": "best.keras", "keras_metadata": "best.json", "saved_model": saved_model,
                  **({"saved_model_error": saved_model_error} if saved_model_error else {})},
        "selection": selection(run, state, best_round, rounds),
        "training": {
            "federated": {"strategy": strategy, "rounds_completed": len(rounds),
                          "hospitals": len(hospital_data),
                          **{f: getattr(run, f) for f in _TRAINING_FIELDS if hasattr(run, f)}},
            "data": hospital_summary(hospital_data, list(task.classes)),
        },
        "evaluation": {
            "test": test_summary(getattr(state, "test_results", None)),
            "test_set": "held-out images mounted only into the aggregator, read once after training",
        },
        "privacy": privacy(run, strategy, rounds),
        "intended_use": "research and teaching on federated learning for blood-cell morphology; not a medical "
                        "device, not validated for diagnosis",
        "limitations": [
            "trained and tested only on the data summarised here; other stains, scanners or magnifications "
            "may lower accuracy",
            f"images are reduced to {task.image_size} x {task.image_size} pixels, so fine detail is lost",
            "probabilities are softmax outputs, not calibrated risks",
        ],
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (the same facts as the JSON)."""
    m, pre, sel = card["model"], card["preprocessing"], card["selection"]
    fed, data = card["training"]["federated"], card["training"]["data"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"Run `{card['run_id']}`, HemaFed {card['hemafed_version']}, written {card['created_at']}.",
        "",
        "## Model",
        "",
        f"- architecture: `{m['architecture']}`",
        f"- input: {m['input']['shape'][0]} x {m['input']['shape'][1]} RGB, float32 values in [0, 255]",
        f"- output: softmax over {m['output']['size']} classes, in this order: "
        + ", ".join(f"{i} `{c}`" for i, c in enumerate(card["classes"])),
        f"- files: `{card['files']['keras']}` (Keras 3) and "
        + (f"`{card['files']['saved_model']['path']}/` (TF SavedModel, endpoint "
           f"`{card['files']['saved_model']['endpoint']}`, signature `{card['files']['saved_model']['signature']}`)"
           if card["files"].get("saved_model") else
           f"no SavedModel ({card['files'].get('saved_model_error', 'not exported')})"),
        "",
        "## Preprocessing",
        "",
        *[f"{i}. {step}" for i, step in enumerate(pre["outside_the_model"], 1)],
        "",
        f"Inside the model: {pre['inside_the_model']}. Reference: `{pre['reference_implementation']}`.",
        "",
        "## Training",
        "",
        f"- strategy: `{fed['strategy'].get('name', '')}` "
        + ", ".join(f"{k}={v}" for k, v in fed["strategy"].items() if k != "name"),
        f"- hospitals: {fed['hospitals']}, rounds completed: {fed['rounds_completed']}"
        + (f" of {fed['rounds']}" if "rounds" in fed else ""),
        f"- best round: {_fmt(sel['best_round'])} ({sel['best_by']} validation accuracy "
        f"{_fmt(sel['best_val_accuracy'])}); {sel['rule']}",
        "- local training: " + ", ".join(f"{k}={fed[k]}" for k in ("local_epochs", "batch_size", "learning_rate",
                                                                   "optimizer", "augment", "class_weighting")
                                        if k in fed),
        "- data: " + ", ".join(f"{k}={fed[k]!r}" for k in ("dataset", "split", "seed") if k in fed),
        "",
        "### Training data per hospital",
        "",
    ]
    classes = card["classes"]
    lines += ["| hospital | train | val | skipped | " + " | ".join(classes) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(classes)]
    rows = [*data["hospitals"].items(), ("**total**", data["totals"])]
    for hid, h in rows:
        lines.append(f"| {hid} | {h['num_train']} | {h['num_val']} | {h['skipped_files']} | "
                     + " | ".join(str(h["classes"].get(c, 0)) for c in classes) + " |")
    lines += ["", data["note"] + ".", "", "## Test figures (best model, held-out test set)", ""]
    test = card["evaluation"]["test"]
    if test is None:
        lines.append("No test set was mounted: the model was not scored on held-out data.")
    else:
        scalars = [(k, v) for k, v in test.items() if k not in ("per_class", "test_time_augmentation")]
        lines += [", ".join(f"{k} {_fmt(v)}" for k, v in scalars) + ".", ""]
        tta = test.get("test_time_augmentation")
        if tta:
            single = tta.get("single_view") or {}
            lines += [f"These figures are of test-time augmentation: the mean over {tta.get('views')} views of "
                      f"each test image. One view (the image as it is): accuracy {_fmt(single.get('accuracy'))}, "
                      f"macro_f1 {_fmt(single.get('macro_f1'))}.", ""]
        per_class = test.get("per_class") or {}
        metrics = [k for k in ("precision", "recall", "f1", "specificity", "support")
                   if any(k in v for v in per_class.values())]
        if per_class:
            lines += ["| class | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
            lines += [f"| {c} | " + " | ".join(_fmt(v.get(k)) for k in metrics) + " |" for c, v in per_class.items()]
    p = card["privacy"]
    s, c = p["sample_level_dp_sgd"], p["client_level"]
    lines += [
        "",
        "## Differential privacy",
        "",
        f"- sample-level DP-SGD at the hospitals: {'on' if s['enabled'] else 'off'} (clip norm {s['clip_norm']}, "
        f"noise multiplier {s['noise_multiplier']}, delta {s['delta']}). {s['note']}.",
        f"- client-level DP at the aggregator: {'on' if c['enabled'] else 'off'} (strategy `{c['strategy']}`"
        + (f", noise multiplier {c.get('noise_multiplier')}, clip norm {c.get('clip_norm')}" if c["enabled"] else "")
        + (f", epsilon {_fmt(c['epsilon'], 3)} at delta {c['epsilon_delta']}" if c.get("epsilon") is not None else "")
        + ").",
        "",
        "## Intended use and limitations",
        "",
        card["intended_use"] + ".",
        "",
        *[f"- {x}" for x in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def export_run(run_dir: Path, *, run: Any, task: TaskSpec, state: Any, hospital_data: dict[str, dict[str, Any]],
               strategy: dict[str, Any]) -> dict[str, Any] | None:
    """Write ``saved_model/`` (from ``best.keras``), ``model_card.json`` and ``model_card.md``.

    Blocking (run it in a worker thread). Returns the card, or None when it could not be written;
    never raises: the run's other results stand whatever happens here."""
    saved, error = None, None
    try:
        from hemafed_aggregator.modelops import export_saved_model

        saved = export_saved_model(run_dir / "best.keras", run_dir / "saved_model")
    except Exception as exc:  # noqa: BLE001 - an export failure must not fail a finished run
        error = f"{type(exc).__name__}: {exc}"
        log.exception("SavedModel export of %s failed", run_dir / "best.keras")
    try:
        card = build_card(run=run, task=task, state=state, hospital_data=hospital_data, strategy=strategy,
                          saved_model=saved, saved_model_error=error)
        (run_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        (run_dir / "model_card.md").write_text(render_markdown(card))
    except Exception:  # noqa: BLE001
        log.exception("writing the model card into %s failed", run_dir)
        return None
    log.info("exported %s: saved_model/ %s, model_card.md", run_dir.name, "written" if saved else "FAILED")
    return card
