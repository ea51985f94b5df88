"""Learning-rate schedules (hemafed.lr) against hand-computed values."""

import math

import pytest

from hemafed.lr import learning_rate_at


def test_constant_is_the_base_rate_every_step():
    assert [learning_rate_at(0.01, t, 5) for t in range(1, 7)] == [0.01] * 6


def test_cosine_hand_computed():
    # T = 4, lr = 0.1, min 0.1 * 0.1 = 0.01: lr_t = 0.01 + 0.09 * (1 + cos(pi (t-1) / 4)) / 2
    got = [learning_rate_at(0.1, t, 4, "cosine", 0.1) for t in (1, 2, 3, 4)]
    want = [0.1, 0.01 + 0.09 * (1 + math.sqrt(0.5)) / 2, 0.055, 0.01 + 0.09 * (1 - math.sqrt(0.5)) / 2]
    assert got == pytest.approx(want, rel=1e-12)
    assert got == sorted(got, reverse=True)
    # past the last step the last rate stays; one step is the base rate
    assert learning_rate_at(0.1, 9, 4, "cosine", 0.1) == pytest.approx(want[-1])
    assert learning_rate_at(0.1, 1, 1, "cosine") == 0.1


def test_cosine_to_zero_stays_positive():
    assert 0 < learning_rate_at(1e-3, 2, 2, "cosine", 0.0) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 2)) / 2)


@pytest.mark.parametrize("args, match", [
    ((0.0, 1, 3), "positive"), ((0.1, 0, 3), "1-based"), ((0.1, 1, 0), "1-based"),
    ((0.1, 1, 3, "step"), "unknown learning-rate schedule 'step'"), ((0.1, 1, 1, "step"), "unknown"),
    ((0.1, 1, 3, "cosine", 1.5), "min_fraction"),
])
def test_bad_arguments_are_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        learning_rate_at(*args)


def test_linear_warmup_hand_computed():
    from hemafed.lr import warmup_rates

    # 2 warm-up epochs of 4 steps at a scheduled rate of 0.08: 0.01, 0.02, ... 0.08 over 8 steps
    assert warmup_rates(0.08, 1, 2, 4) == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert warmup_rates(0.08, 2, 2, 4) == pytest.approx([0.05, 0.06, 0.07, 0.08])
    assert warmup_rates(0.08, 3, 2, 4) is None
    assert warmup_rates(0.08, 1, 0, 4) is None
    with pytest.raises(ValueError):
        warmup_rates(0.08, 1, 2, 0)
    with pytest.raises(ValueError):
        warmup_rates(0.08, 0, 2, 4)
