"""Pure numpy aggregation helpers against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemafed_aggregator.aggregation import (
    add_scaled,
    check_same_structure,
    clip_by_global_norm,
    coordinate_median,
    flatten,
    global_norm,
    krum_scores,
    multi_krum,
    subtract,
    trimmed_mean,
    unweighted_average,
    update_outlier_scores,
    weighted_average,
    zeros_like,
)


def arr(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float64)


# --------------------------------------------------------------------------- averages


def test_weighted_average_by_hand() -> None:
    # (1*[1, 2] + 3*[5, 6]) / 4 = [4, 5];  (1*[[0]] + 3*[[4]]) / 4 = [[3]]
    out = weighted_average([[arr(1, 2), np.array([[0.0]])], [arr(5, 6), np.array([[4.0]])]], [1, 3])
    np.testing.assert_allclose(out[0], [4.0, 5.0])
    np.testing.assert_allclose(out[1], [[3.0]])


def test_weighted_average_zero_weight_and_dtype() -> None:
    out = weighted_average([[np.array([1, 1], np.float32)], [np.array([9, 9], np.float32)]], [2, 0])
    assert out[0].dtype == np.float32
    np.testing.assert_array_equal(out[0], [1, 1])


@pytest.mark.parametrize(
    ("updates", "n"),
    [
        ([], []),
        ([[arr(1)]], [0]),
        ([[arr(1)], [arr(2)]], [1, -1]),
        ([[arr(1)], [arr(2)]], [1]),
        ([[arr(1)], [arr(2, 3)]], [1, 1]),
        ([[arr(1)], [arr(2), arr(3)]], [1, 1]),
    ],
)
def test_weighted_average_rejects(updates: list, n: list) -> None:
    with pytest.raises(ValueError):
        weighted_average(updates, n)


def test_unweighted_average_by_hand() -> None:
    np.testing.assert_allclose(unweighted_average([[arr(1, 2)], [arr(5, 6)], [arr(0, 1)]])[0], [2.0, 3.0])
    with pytest.raises(ValueError):
        unweighted_average([])


def test_small_helpers() -> None:
    np.testing.assert_allclose(subtract([arr(3, 4)], [arr(1, 1)])[0], [2, 3])
    out = add_scaled([np.array([1, 1], np.float32)], [arr(2, 4)], 0.5)
    assert out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], [2, 3])
    assert global_norm([arr(3), np.array([[4.0]])]) == 5.0
    np.testing.assert_array_equal(flatten([arr(1, 2), np.array([[3.0]])]), [1, 2, 3])
    z = zeros_like([np.ones((2, 1), np.float32)])
    assert z[0].shape == (2, 1) and z[0].dtype == np.float64 and not z[0].any()
    check_same_structure([[arr(1)], [arr(2)]])
    with pytest.raises(ValueError):
        check_same_structure([[arr(1)], [arr(2, 3)]])


# --------------------------------------------------------------------------- robust


def test_coordinate_median_and_trimmed_mean_by_hand() -> None:
    u = [[arr(v, w)] for v, w in [(1, 3), (2, -50), (3, 0), (4, 1), (100, 2)]]
    np.testing.assert_allclose(coordinate_median(u)[0], [3.0, 1.0])
    np.testing.assert_allclose(trimmed_mean(u, 0.2)[0], [3.0, 1.0])  # mean(2,3,4), mean(0,1,2)
    np.testing.assert_allclose(trimmed_mean(u, 0.0)[0], [22.0, -8.8])
    np.testing.assert_allclose(coordinate_median(u[:4])[0], [2.5, 0.5])  # {1,2,3,4}, {-50,0,1,3}
    with pytest.raises(ValueError):
        trimmed_mean(u, 0.5)


def test_krum_by_hand() -> None:
    # points 0, 1, 2.5, 3, 100 with f = 1 (2 neighbours): scores 7.25, 3.25, 2.5, 4.25, 18915.25
    u = [[arr(v)] for v in (0, 1, 2.5, 3, 100)]
    np.testing.assert_allclose(krum_scores(u, 1), [7.25, 3.25, 2.5, 4.25, 18915.25])
    agg, chosen = multi_krum(u, 1, 2)
    assert chosen == [2, 1]
    np.testing.assert_allclose(agg[0], [1.75])
    with pytest.raises(ValueError):
        krum_scores(u[:4], 1)
    with pytest.raises(ValueError):
        multi_krum(u, 1, 0)


def test_update_outlier_scores_by_hand() -> None:
    # global 0; updates a = (1, 0), b = (1, 1), c = (-2, 0) [first coord in one tensor, second in another]
    # consensus = coordinate median = (1, 0); norms 1, sqrt 2, 2; cosines 1, 1/sqrt 2, -1
    g = [arr(0), arr(0)]
    out = update_outlier_scores(g, {"a": [arr(1), arr(0)], "b": [arr(1), arr(1)], "c": [arr(-2), arr(0)]})
    assert out["a"] == pytest.approx({"norm": 1.0, "cosine_to_consensus": 1.0})
    assert out["b"] == pytest.approx({"norm": math.sqrt(2), "cosine_to_consensus": 1 / math.sqrt(2)})
    assert out["c"] == pytest.approx({"norm": 2.0, "cosine_to_consensus": -1.0})


def test_update_outlier_scores_edges() -> None:
    assert update_outlier_scores([arr(0)], {}) == {}
    # a zero update has cosine 0 (undefined), and a zero consensus gives 0 for everyone
    out = update_outlier_scores([arr(1, 1)], {"a": [arr(1, 1)], "b": [arr(2, 1)], "c": [arr(1, 1)]})
    assert out["a"] == {"norm": 0.0, "cosine_to_consensus": 0.0}
    assert out["b"]["norm"] == 1.0 and out["b"]["cosine_to_consensus"] == 0.0
    with pytest.raises(ValueError):
        update_outlier_scores([arr(0, 0)], {"a": [arr(1)]})


# --------------------------------------------------------------------------- clipping


def test_clip_by_global_norm_by_hand() -> None:
    clipped, norm = clip_by_global_norm([arr(3), np.array([[4.0]])], 1.0)  # norm 5 -> x 1/5
    assert norm == 5.0
    np.testing.assert_allclose(clipped[0], [0.6])
    np.testing.assert_allclose(clipped[1], [[0.8]])
    kept, norm = clip_by_global_norm([arr(0.3, 0.4)], 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_allclose(kept[0], [0.3, 0.4])
    zero, norm = clip_by_global_norm([arr(0, 0)], 1.0)
    assert norm == 0.0 and not zero[0].any()
    with pytest.raises(ValueError):
        clip_by_global_norm([arr(1)], 0.0)


def test_subtract_and_add_scaled_reject_mismatched_structure() -> None:
    with pytest.raises(ValueError):
        subtract([arr(1, 2)], [arr(1)])  # would broadcast silently otherwise
    with pytest.raises(ValueError):
        add_scaled([arr(1)], [arr(1), arr(2)], 1.0)  # would truncate silently otherwise
