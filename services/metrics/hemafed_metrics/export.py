"""CSV encodings of rounds and resource samples (what the ``*.csv`` routes return)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from hemafed.schemas import GlobalRoundMetrics, HospitalRoundMetrics, ResourceSamplePublic, RoundPublic, RunPublic

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"

_GLOBAL = tuple(GlobalRoundMetrics.model_fields)
_HOSPITAL = tuple(HospitalRoundMetrics.model_fields)
ROUND_COLUMNS = (
    "run_id",
    "round",
    *(f"global_{c}" for c in _GLOBAL),
    "duration_seconds",
    "recorded_at",
    "hospital_id",
    *_HOSPITAL,
)
RESOURCE_COLUMNS = tuple(ResourceSamplePublic.model_fields)


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


def rounds_csv(rounds: Iterable[RoundPublic]) -> str:
    """One row per (round, hospital) with the round's global columns repeated; a round
    without hospitals still gets one row (empty hospital columns)."""

    def rows() -> Iterable[list[object]]:
        for r in rounds:
            head = [
                r.run_id,
                r.round,
                *(getattr(r.global_, c) for c in _GLOBAL),
                r.duration_seconds,
                r.recorded_at,
            ]
            if not r.hospitals:
                yield [*head, None, *(None for _ in _HOSPITAL)]
            for hid in sorted(r.hospitals):
                h = r.hospitals[hid]
                yield [*head, hid, *(getattr(h, c) for c in _HOSPITAL)]

    return _csv(ROUND_COLUMNS, rows())


def resources_csv(samples: Iterable[ResourceSamplePublic]) -> str:
    """One row per sample."""
    return _csv(RESOURCE_COLUMNS, ([getattr(s, c) for c in RESOURCE_COLUMNS] for s in samples))


# ---- the dashboard's other tables (runs, hospital data, test results) ----------------------

RUN_COLUMNS = (
    "id", "status", "dataset", "split", "model", "strategy", "clients", "rounds_total", "rounds_completed",
    "image_size", "local_epochs", "batch_size", "learning_rate", "optimizer", "seed", "best_round",
    "test_accuracy", "macro_f1", "started_at", "finished_at", "message",
)
HOSPITAL_DATA_COLUMNS = ("hospital_id", "num_train", "num_val", "skipped_files", "class", "count")


def runs_csv(runs: Iterable[RunPublic]) -> str:
    """One row per run: its settings (from ``config``) and final figures."""

    def row(r: RunPublic) -> list[object]:
        cfg, test = r.config or {}, r.test_results or {}
        values = {**{c: cfg.get(c) for c in RUN_COLUMNS},
                  **r.model_dump(mode="json", exclude={"config", "test_results"})}
        values["macro_f1"] = test.get("macro_f1")
        return [values.get(c) for c in RUN_COLUMNS]

    return _csv(RUN_COLUMNS, (row(r) for r in runs))


def hospital_data_csv(run: RunPublic) -> str:
    """One row per (hospital, class) with the hospital's counts (never file names or pixels)."""

    def rows() -> Iterable[list[object]]:
        data = (run.config or {}).get("hospital_data") or {}
        for hid in sorted(data):
            h = data[hid] or {}
            head = [hid, h.get("num_train"), h.get("num_val"), h.get("skipped_files")]
            classes = h.get("classes") or {}
            if not classes:
                yield [*head, None, None]
            for cls in sorted(classes):
                yield [*head, cls, classes[cls]]

    return _csv(HOSPITAL_DATA_COLUMNS, rows())


def per_class_csv(run: RunPublic) -> str:
    """The test set's per-class table: one row per class, one column per metric present."""
    per_class = (run.test_results or {}).get("per_class") or {}
    metrics: list[str] = []
    for values in per_class.values():
        for k in values if isinstance(values, dict) else ():
            if k not in metrics:
                metrics.append(k)
    return _csv(("class", *metrics),
                ([cls, *((v or {}).get(m) for m in metrics)] for cls, v in per_class.items()))


def confusion_csv(run: RunPublic) -> str:
    """The test confusion matrix: rows are true classes, columns predicted classes."""
    test = run.test_results or {}
    classes = [str(c) for c in test.get("classes") or []]
    matrix = test.get("confusion_matrix") or []
    return _csv(("true \\ predicted", *classes),
                ([classes[i] if i < len(classes) else i, *row] for i, row in enumerate(matrix)))
