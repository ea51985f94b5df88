"""CSV encodings of rounds and resource samples (what the ``*.csv`` routes return)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from hemafed.schemas import GlobalRoundMetrics, HospitalRoundMetrics, ResourceSamplePublic, RoundPublic

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
