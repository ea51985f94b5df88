"""Data schedules (the thesis' Case 1 / Case 2) against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from hemafed.data.schedule import parts_of, round_indices


def test_full_uses_everything_every_round() -> None:
    for rnd in (1, 2, 7):
        assert round_indices(10, rnd, schedule="full", parts=5).tolist() == list(range(10))


def test_parts_are_disjoint_near_equal_and_cover_all() -> None:
    cut = parts_of(23, 5, seed=3)
    assert [len(p) for p in cut] == [5, 5, 5, 4, 4]
    joined = np.concatenate(cut)
    assert sorted(joined.tolist()) == list(range(23))
    assert all(np.all(np.diff(p) > 0) for p in cut)  # sorted, no repeats
    # the same cut every time (restart-safe), another for another seed
    assert all(np.array_equal(a, b) for a, b in zip(cut, parts_of(23, 5, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(cut, parts_of(23, 5, seed=4)))


def test_weekly_round_r_sees_part_r_only_and_wraps() -> None:
    cut = parts_of(20, 4, seed=0)
    seen = [round_indices(20, r, schedule="weekly", parts=4, seed=0) for r in (1, 2, 3, 4)]
    for r, idx in enumerate(seen):
        assert np.array_equal(idx, cut[r])
    # each image is seen exactly once over the R rounds (Case 1: no image comes back)
    assert sorted(np.concatenate(seen).tolist()) == list(range(20))
    assert np.array_equal(round_indices(20, 5, schedule="weekly", parts=4, seed=0), cut[0])


def test_weekly_recycle_carries_the_fraction_of_last_rounds_images() -> None:
    n, parts, f = 40, 4, 0.6
    cut = parts_of(n, parts, seed=1)
    r1 = round_indices(n, 1, schedule="weekly-recycle", parts=parts, recycle_fraction=f, seed=1)
    r2 = round_indices(n, 2, schedule="weekly-recycle", parts=parts, recycle_fraction=f, seed=1)
    r3 = round_indices(n, 3, schedule="weekly-recycle", parts=parts, recycle_fraction=f, seed=1)
    assert np.array_equal(r1, cut[0])  # round 1: the first week only
    # round 2 = week 2 + 60% of round 1's 10 images = 10 + 6
    assert set(cut[1]) <= set(r2) and len(r2) == 16
    assert len(set(r2) & set(cut[0])) == 6
    # round 3 = week 3 + round(0.6 * 16) = 10 of round 2's images
    assert set(cut[2]) <= set(r3) and len(r3) == 10 + 10
    assert set(r3) - set(cut[2]) <= set(r2)
    # deterministic
    assert np.array_equal(r3, round_indices(n, 3, schedule="weekly-recycle", parts=parts, recycle_fraction=f, seed=1))


def test_recycle_fraction_zero_is_case_1_and_one_keeps_everything() -> None:
    for r in (1, 2, 3):
        assert np.array_equal(round_indices(12, r, schedule="weekly-recycle", parts=3, recycle_fraction=0.0),
                              round_indices(12, r, schedule="weekly", parts=3))
    assert round_indices(12, 3, schedule="weekly-recycle", parts=3, recycle_fraction=1.0).tolist() == list(range(12))


@pytest.mark.parametrize("kw, match", [
    ({"schedule": "monthly"}, "unknown schedule"),
    ({"schedule": "weekly", "parts": 2, "rnd": 0}, "from 1"),
    ({"schedule": "weekly-recycle", "parts": 2, "recycle_fraction": 1.5}, "recycle_fraction"),
])
def test_bad_arguments_are_refused(kw: dict, match: str) -> None:
    rnd = kw.pop("rnd", 1)
    with pytest.raises(ValueError, match=match):
        round_indices(10, rnd, **kw)
