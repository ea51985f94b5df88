"""Intermittent hospitals: PARTICIPATION parsing and who is present in a round."""

from __future__ import annotations

import pytest

from hemafed_aggregator.participation import Participation

IDS = [f"hospital-{i}" for i in range(1, 11)]


def test_default_is_everyone_every_round() -> None:
    for text in ("", "all", "  "):
        p = Participation.parse(text)
        assert p.mode == "all" and p.describe() == "all"
        assert p.present(IDS, 7, seed=0) == IDS


def test_declared_schedule_absent_rounds_and_ranges() -> None:
    p = Participation.parse("schedule:hospital-2=3-5;hospital-4=1-2,8")
    assert p.mode == "schedule"
    assert p.absent == {"hospital-2": frozenset({3, 4, 5}), "hospital-4": frozenset({1, 2, 8})}
    ids = IDS[:4]
    assert p.present(ids, 1, seed=0) == ["hospital-1", "hospital-2", "hospital-3"]
    assert p.present(ids, 3, seed=0) == ["hospital-1", "hospital-3", "hospital-4"]
    assert p.present(ids, 6, seed=0) == ids
    assert p.present(ids, 8, seed=0) == ["hospital-1", "hospital-2", "hospital-3"]
    assert p.describe() == "schedule:hospital-2=3,4,5;hospital-4=1,2,8"


def test_random_is_deterministic_per_seed_and_round_and_about_p() -> None:
    p = Participation.parse("random:0.5")
    assert p.mode == "random" and p.probability == 0.5
    a = [p.present(IDS, r, seed=3) for r in range(1, 201)]
    assert a == [p.present(IDS, r, seed=3) for r in range(1, 201)]  # same after a resume
    assert a != [p.present(IDS, r, seed=4) for r in range(1, 201)]
    share = sum(len(x) for x in a) / (200 * len(IDS))
    assert 0.45 < share < 0.55
    assert len({tuple(x) for x in a}) > 50  # different hospitals in different rounds
    for x in a:
        assert x == [h for h in IDS if h in x]  # order kept


def test_random_brings_hospitals_back_up_to_min_present() -> None:
    p = Participation.parse("random:0.05")
    for r in range(1, 50):
        here = p.present(IDS, r, seed=1, min_present=3)
        assert len(here) >= 3
    assert p.present(IDS[:2], 1, seed=1, min_present=5) == IDS[:2]  # never more than exist


@pytest.mark.parametrize("text, match", [
    ("random:x", "needs a number"),
    ("random:0", r"\(0, 1\]"),
    ("random:1.5", r"\(0, 1\]"),
    ("schedule:hospital-2", "must be <hospital>=<rounds>"),
    ("schedule:hospital-2=5-3", "bad range"),
    ("schedule:hospital-2=0", "bad range"),
    ("schedule:hospital-2=a", "not a round"),
    ("schedule:hospital-2=", "names no rounds"),
    ("sometimes", "use ''"),
])
def test_bad_declarations_are_refused_clearly(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Participation.parse(text)


def test_run_config_refuses_a_bad_participation_at_start_up() -> None:
    from pydantic import ValidationError

    from hemafed_aggregator.settings import RunConfig

    with pytest.raises(ValidationError, match="PARTICIPATION"):
        RunConfig(participation="random:2")
    assert RunConfig(participation="random:0.7", departed="keep").departed == "keep"
