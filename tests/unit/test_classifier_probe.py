"""benchmarks/classifier_probe.py: the numpy classifier re-training it reports, against its
definitions (gradient by finite differences, one federated step = one pooled step), and the
script end to end on a tiny run of the simulation engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("classifier_probe", ROOT / "benchmarks" / "classifier_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

RNG = np.random.default_rng(0)


def _loss(W, b, X, y, l2):
    z = X @ W + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + 0.5 * l2 * np.sum(W * W)


def test_gradient_is_that_of_the_cross_entropy() -> None:
    X, y = RNG.normal(size=(7, 4)), np.array([0, 1, 2, 0, 1, 2, 2])
    W, b = RNG.normal(size=(4, 3)), RNG.normal(size=3)
    gW, gb = probe.softmax_grad(W, b, X, y, 0.1)
    eps = 1e-6
    for idx in [(0, 0), (3, 2), (1, 1)]:
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += eps
        Wm[idx] -= eps
        assert gW[idx] == pytest.approx((_loss(Wp, b, X, y, 0.1) - _loss(Wm, b, X, y, 0.1)) / (2 * eps), rel=1e-5)
    bp, bm = b.copy(), b.copy()
    bp[1] += eps
    bm[1] -= eps
    assert gb[1] == pytest.approx((_loss(W, bp, X, y, 0.1) - _loss(W, bm, X, y, 0.1)) / (2 * eps), rel=1e-5)


def test_one_federated_step_is_one_pooled_step_and_training_fixes_a_biased_classifier() -> None:
    # two hospitals, each holding mostly one class; the classifier starts biased to class 0
    X1 = RNG.normal(size=(30, 2)) + [2.0, 0.0]
    X2 = RNG.normal(size=(10, 2)) - [2.0, 0.0]
    parts = [(X1, np.zeros(30, np.int64)), (X2, np.ones(10, np.int64))]
    W0, b0 = np.zeros((2, 2)), np.array([3.0, 0.0])
    Xp, yp = np.concatenate([X1, X2]), np.concatenate([parts[0][1], parts[1][1]])
    one_fed = probe.federated_classifier(W0, b0, parts, rounds=1, steps=1, lr=0.5)
    one_pooled = probe.fit_classifier(W0, b0, Xp, yp, steps=1, lr=0.5)
    for a, b in zip(one_fed, one_pooled):  # the example-weighted mean of the gradients is the pooled one
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert b0.tolist() == [3.0, 0.0]  # inputs untouched
    acc0, rec0 = probe.scores(W0, b0, Xp, yp, 2)
    assert acc0 == 0.75 and rec0.tolist() == [1.0, 0.0]
    acc, rec = probe.scores(*probe.federated_classifier(W0, b0, parts, rounds=50, steps=5, lr=0.5), Xp, yp, 2)
    assert acc > 0.95 and rec[1] > 0.9
    _, rec3 = probe.scores(W0, b0, Xp, yp, 3)
    assert np.isnan(rec3[2])  # a class absent from the labels has no recall


def test_the_script_on_a_tiny_simulated_run(tmp_path, capsys) -> None:
    pytest.importorskip("tensorflow")
    from hemafed_aggregator import simulate as sim

    rc = sim.main(["--clients", "2", "--rounds", "1", "--results-dir", str(tmp_path), "--run-id", "tiny",
                   "--work-dir", str(tmp_path / "split"), "--synthetic-per-class", "8", "--synthetic-size", "16",
                   "--min-per-hospital", "4", "--image-size", "16", "--local-epochs", "1", "--batch-size", "16",
                   "--max-steps-per-epoch", "1"])
    assert rc == 0
    [split] = list((tmp_path / "split").glob("split-*"))
    capsys.readouterr()
    assert probe.main(["--run", "tiny", "--results", str(tmp_path), "--data", str(split), "--steps", "5",
                       "--rounds", "2", "--local-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "tiny: 2 hospitals" in out and "| the model as it is |" in out
    assert "| linear probe on the pooled features (5 steps; upper bound) |" in out
    assert "| classifier re-trained federated (2 rounds x 2 steps) |" in out
    with pytest.raises(SystemExit):
        probe.main(["--run", "tiny", "--results", str(tmp_path), "--data", str(tmp_path / "none")])
