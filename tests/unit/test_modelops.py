"""The aggregator's test report arithmetic, against a hand-computed confusion matrix."""

import pytest

from hemafed_aggregator.modelops import classification_report


def test_report_from_a_hand_computed_confusion_matrix():
    # rows = true class, columns = predicted
    cm = [[8, 2, 0],
          [1, 3, 0],
          [0, 0, 0]]  # class c has no test images
    rep = classification_report(cm, ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(11 / 14)
    a, b = rep["per_class"]["a"], rep["per_class"]["b"]
    assert a["precision"] == pytest.approx(8 / 9) and a["recall"] == pytest.approx(8 / 10)
    assert b["precision"] == pytest.approx(3 / 5) and b["recall"] == pytest.approx(3 / 4)
    assert a["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert a["specificity"] == pytest.approx(3 / 4)  # of the 4 non-a images, 3 not called a
    assert b["specificity"] == pytest.approx(8 / 10)
    assert a["support"] == 10 and b["support"] == 4 and rep["per_class"]["c"]["support"] == 0
    # macro averages run over the classes that have test images
    assert rep["macro_precision"] == pytest.approx((8 / 9 + 3 / 5) / 2)
    assert rep["macro_recall"] == pytest.approx((0.8 + 0.75) / 2)
    assert rep["confusion_matrix"] == cm and rep["classes"] == ["a", "b", "c"]
