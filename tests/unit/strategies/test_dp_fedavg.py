"""DP-FedAvg with fixed clipping (McMahan et al. 2018) against hand-computed numbers, a
statistical check of the noise, and the RDP accounting."""

from __future__ import annotations

import math
from itertools import pairwise

import dp_accounting
import numpy as np
import pytest

from hemafed_aggregator.strategies import DPFedAvg, build_strategy
from hemafed_aggregator.strategies.base import FitRes
from tests.unit.strategies.helpers import Client, arr


def two() -> list[FitRes]:
    # updates from x = [0, 0]: [3, 4] (norm 5 -> clipped to [0.6, 0.8]), [0.3, 0.4] (norm 0.5, kept)
    return [FitRes("a", [arr(3, 4)], 100), FitRes("b", [arr(0.3, 0.4)], 1)]


# --------------------------------------------------------------------------- clipping / averaging


def test_clipped_mean_without_noise() -> None:
    s = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0)
    out = s.aggregate_train(1, [arr(0, 0)], two(), [])
    np.testing.assert_allclose(out[0], [0.45, 0.6])  # ([0.6, 0.8] + [0.3, 0.4]) / 2, examples ignored
    assert s.last_norms == pytest.approx({"a": 5.0, "b": 0.5})


def test_fixed_denominator() -> None:
    s = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0, expected_clients_per_round=4)
    np.testing.assert_allclose(s.aggregate_train(1, [arr(0, 0)], two(), [])[0], [0.225, 0.3])


def test_denominator_is_number_selected_not_answered() -> None:
    # 10 hospitals, C = 0.5 -> 5 selected, 2 answer: [0.9, 1.2] / 5
    s = DPFedAvg(noise_multiplier=0.0, fraction_fit=0.5)
    s.configure_train(1, [arr(0, 0)], [Client(f"h{i}") for i in range(10)], np.random.default_rng(0))
    np.testing.assert_allclose(s.aggregate_train(1, [arr(0, 0)], two(), [])[0], [0.18, 0.24])
    # with num_clients: D = max(ceil(0.3 * 10), 1) = 3, q = 0.3
    s = DPFedAvg(noise_multiplier=0.0, fraction_fit=0.3, num_clients=10)
    assert s.sampling_probability == pytest.approx(0.3)
    np.testing.assert_allclose(s.aggregate_train(1, [arr(0, 0)], two(), [])[0], [0.3, 0.4])


def test_sampled_hospitals_are_drawn_from_fresh_entropy_unless_noise_is_seeded() -> None:
    """Amplification by sampling assumes the adversary does not know who took part: the run's SEED
    (recorded in its config) must not decide the draw of a deployment (no noise_seed)."""
    clients = [Client(f"h{i}") for i in range(1000)]

    def drawn(s, server_rng: np.random.Generator) -> list[str]:
        return sorted(c.id for c, _ in s.configure_train(1, [arr(0, 0)], clients, server_rng))

    server = np.random.default_rng(0)
    before = server.bit_generator.state
    a = drawn(DPFedAvg(fraction_fit=0.2), server)
    assert len(a) == 200 and server.bit_generator.state == before  # the server's generator is not used
    # two deployments with the same run seed draw different hospitals (equal: probability ~1e-215)
    assert a != drawn(DPFedAvg(fraction_fit=0.2), np.random.default_rng(0))
    # the draw is part of the checkpointed generator: a resumed deployment draws what it would have
    s = DPFedAvg(fraction_fit=0.2)
    saved = s.state_dict()
    resumed = DPFedAvg(fraction_fit=0.2)
    resumed.load_state_dict(saved)
    assert drawn(resumed, np.random.default_rng(1)) == drawn(s, np.random.default_rng(2))
    # with noise_seed, the server's run-seeded draw, exactly FedAvg's (the measured experiments)
    expected = drawn(build_strategy("fedavg", fraction_fit=0.2), np.random.default_rng(0))
    assert drawn(DPFedAvg(fraction_fit=0.2, noise_seed=5), np.random.default_rng(0)) == expected
    assert drawn(DPFedAvg(fraction_fit=0.2, noise_seed=6), np.random.default_rng(0)) == expected


def test_clip_is_on_the_update_across_tensors_with_server_lr() -> None:
    # x = ([1], [1]); model ([4], [5]) -> update ([3], [4]), norm 5, clip 2 -> ([1.2], [1.6]); lr 0.5
    s = DPFedAvg(noise_multiplier=0.0, clip_norm=2.0, server_lr=0.5)
    out = s.aggregate_train(1, [arr(1), arr(1)], [FitRes("a", [arr(4), arr(5)], 1)], [])
    np.testing.assert_allclose(out[0], [1.6])
    np.testing.assert_allclose(out[1], [1.8])


def test_server_momentum_on_the_clipped_average() -> None:
    """v <- beta v + Delta, x <- x + eta v (FedAvgM's server step on the released average)."""
    s = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0, server_momentum=0.5, server_lr=2.0)
    # round 1: Delta = [0.45, 0.6] (test_clipped_mean_without_noise); v = Delta; x = 2 v = [0.9, 1.2]
    x1 = s.aggregate_train(1, [arr(0, 0)], two(), [])
    np.testing.assert_allclose(x1[0], [0.9, 1.2])
    # round 2 from x1: one hospital moves by [0.3, 0.4] (norm 0.5, kept); D = 1 -> Delta = [0.3, 0.4]
    # v = 0.5 [0.45, 0.6] + [0.3, 0.4] = [0.525, 0.7]; x = x1 + 2 v = [1.95, 2.6]
    saved = s.state_dict()
    x2 = s.aggregate_train(2, x1, [FitRes("b", [x1[0] + arr(0.3, 0.4)], 1)], [])
    np.testing.assert_allclose(x2[0], [1.95, 2.6])
    np.testing.assert_allclose(s.velocity[0], [0.525, 0.7])
    # the momentum buffer is part of the checkpointed state
    resumed = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0, server_momentum=0.5, server_lr=2.0)
    resumed.load_state_dict(saved)
    np.testing.assert_allclose(resumed.aggregate_train(2, x1, [FitRes("b", [x1[0] + arr(0.3, 0.4)], 1)], [])[0], x2[0])
    assert s.describe()["server_momentum"] == 0.5
    # beta = 0 (the default) keeps no buffer: plain DP-FedAvg
    plain = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0)
    plain.aggregate_train(1, [arr(0, 0)], two(), [])
    assert plain.velocity is None and plain.state_dict()["velocity"] is None


# --------------------------------------------------------------------------- adaptive clipping


def test_adaptive_clip_moves_geometrically_towards_the_quantile() -> None:
    """Andrew et al. 2021, Algorithm 1 without noise: b = sum(1[||D_k|| <= C] - 1/2) / D + 1/2,
    C <- C exp(-eta (b - gamma)); each round clips with the C it started with."""
    s = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0, target_unclipped_quantile=0.9, clip_learning_rate=0.5)
    # round 1: norms 5 (clipped) and 0.5 (kept) -> b = ((0 - 0.5) + (1 - 0.5)) / 2 + 0.5 = 0.5
    np.testing.assert_allclose(s.aggregate_train(1, [arr(0, 0)], two(), [])[0], [0.45, 0.6])
    assert s.last_unclipped_fraction == pytest.approx(0.5)
    assert s.clip == pytest.approx(math.exp(0.2))  # 1 * exp(-0.5 (0.5 - 0.9))
    assert s.round_report(1) == {"dp_epsilon": None, "dp_delta": 1e-5, "dp_clip_norm": 1.0,
                                 "dp_unclipped_fraction": pytest.approx(0.5),
                                 "dp_next_clip_norm": pytest.approx(math.exp(0.2))}
    # round 2 clips with C = e^0.2 = 1.22140: [3, 4] -> 1.22140 [0.6, 0.8]; average with [0.3, 0.4]
    saved = s.state_dict()
    c = math.exp(0.2)
    out = s.aggregate_train(2, [arr(0, 0)], two(), [])[0]
    np.testing.assert_allclose(out, [(0.6 * c + 0.3) / 2, (0.8 * c + 0.4) / 2])
    assert s.clip == pytest.approx(math.exp(0.4))
    # the clip is part of the checkpointed state
    resumed = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0, target_unclipped_quantile=0.9, clip_learning_rate=0.5)
    resumed.load_state_dict(saved)
    assert resumed.clip == pytest.approx(c)
    np.testing.assert_allclose(resumed.aggregate_train(2, [arr(0, 0)], two(), [])[0], out)
    # gamma below the kept fraction shrinks the clip: b = 0.5, gamma = 0.25 -> C = exp(-0.2 * 0.25)
    low = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0, target_unclipped_quantile=0.25)
    low.aggregate_train(1, [arr(0, 0)], two(), [])
    assert low.clip == pytest.approx(math.exp(-0.05))
    d = low.describe()
    assert (d["target_unclipped_quantile"], d["clip_learning_rate"], d["clipped_count_stddev"]) == (0.25, 0.2, None)
    # fixed clipping (the default) never moves and reports no clip
    fixed = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0)
    for rnd in (1, 2):
        fixed.aggregate_train(rnd, [arr(0, 0)], two(), [])
    assert fixed.clip == 1.0 and fixed.last_clip is None and "dp_clip_norm" not in fixed.round_report(2)


def test_adaptive_clip_settles_at_the_median_norm() -> None:
    # 100 hospitals with update norms 1..100; from C = 0.1 the clip climbs at most e^0.1 a round and
    # then stays within one step of the median (50.5)
    results = [FitRes(f"h{k}", [arr(k, 0)], 1) for k in range(1, 101)]
    s = DPFedAvg(noise_multiplier=0.0, clip_norm=0.1, target_unclipped_quantile=0.5)
    clips = []
    for rnd in range(1, 201):
        s.aggregate_train(rnd, [arr(0, 0)], results, [])
        clips.append(s.clip)
    assert clips[0] == pytest.approx(0.1 * math.exp(0.1))  # all clipped: b = 0
    assert all(48 < c < 53 for c in clips[-50:])


def test_adaptive_clipping_splits_the_noise_multiplier() -> None:
    """z_Delta = (z^-2 - (2 sigma_b)^-2)^-1/2: value and count noise together are one Gaussian
    mechanism of multiplier z, so epsilon is that of z (Andrew et al. 2021, Theorem 1)."""
    s = DPFedAvg(noise_multiplier=1.0, clip_norm=2.0, expected_clients_per_round=4, noise_seed=3,
                 target_unclipped_quantile=0.5, clipped_count_stddev=1.0)
    z_value = s.value_noise_multiplier(3)
    assert z_value == pytest.approx(1 / math.sqrt(0.75))  # (1 - 1/4)^-1/2
    assert z_value ** -2 + 2.0 ** -2 == pytest.approx(1.0)
    assert s.noise_std(3) == pytest.approx(z_value * 2.0 / 4)
    assert s.epsilon(10) == DPFedAvg(noise_multiplier=1.0, clip_norm=2.0).epsilon(10)
    # the value noise has that std: hospitals that return x leave pure noise (clip moves after the round)
    d = 40_000
    out = s.aggregate_train(1, [np.zeros(d)], [FitRes(h, [np.zeros(d)], 1) for h in "abc"], [])[0]
    assert np.std(out) == pytest.approx(z_value * 2.0 / 4, rel=0.03)
    # default sigma_b = 0.05 D: D = 200 -> 10, z_Delta = (z^-2 - 1/400)^-1/2
    dflt = DPFedAvg(noise_multiplier=1.227, expected_clients_per_round=200, target_unclipped_quantile=0.5)
    assert dflt.count_stddev(150) == pytest.approx(10.0)
    assert dflt.value_noise_multiplier(150) == pytest.approx((1.227 ** -2 - 1 / 400) ** -0.5)
    # without adaptive clipping the whole multiplier is on the update
    assert DPFedAvg(noise_multiplier=1.227, clipped_count_stddev=1.0).value_noise_multiplier(5) == 1.227
    # a sigma_b the budget cannot carry (2 sigma_b <= z) is refused: at start-up when it is known...
    with pytest.raises(ValueError, match="too small"):
        DPFedAvg(noise_multiplier=1.0, target_unclipped_quantile=0.5, clipped_count_stddev=0.5)
    with pytest.raises(ValueError, match="too small"):
        DPFedAvg(noise_multiplier=1.0, target_unclipped_quantile=0.5, expected_clients_per_round=10)
    # ... else in the round, before anything moves (D = 2 answers -> sigma_b = 0.1 <= z / 2)
    tight = DPFedAvg(noise_multiplier=1.0, target_unclipped_quantile=0.5)
    with pytest.raises(ValueError, match="too small"):
        tight.aggregate_train(1, [arr(0, 0)], two(), [])
    assert tight.clip == 1.0 and tight.last_norms == {}


def test_adaptive_clipping_noises_the_count() -> None:
    # every update is 0 (within any clip): the exact fraction is 1, the released one 1 + N(0, (sigma_b / D)^2)
    s = DPFedAvg(noise_multiplier=1.0, expected_clients_per_round=10, noise_seed=5,
                 target_unclipped_quantile=0.5, clipped_count_stddev=5.0)
    results = [FitRes(f"h{k}", [arr(0.0)], 1) for k in range(10)]
    fractions = []
    for rnd in range(1, 2001):
        s.aggregate_train(rnd, [arr(0.0)], results, [])
        fractions.append(s.last_unclipped_fraction)
    assert np.mean(fractions) == pytest.approx(1.0, abs=0.05)
    assert np.std(fractions) == pytest.approx(0.5, rel=0.05)


# --------------------------------------------------------------------------- noise


def test_noise_std_matches_z_s_over_denominator() -> None:
    # every hospital returns x -> the result is pure noise of std z S / D = 1.5 * 2 / 4 = 0.75
    d = 40_000
    s = DPFedAvg(noise_multiplier=1.5, clip_norm=2.0, expected_clients_per_round=4, noise_seed=123)
    zeros = [np.zeros(d)]
    out = s.aggregate_train(1, zeros, [FitRes(h, [np.zeros(d)], 1) for h in "abc"], [])[0]
    assert s.noise_std(3) == pytest.approx(0.75)
    assert np.std(out) == pytest.approx(0.75, rel=0.03)
    assert abs(np.mean(out)) < 4 * 0.75 / math.sqrt(d)


def test_noise_is_seeded_and_resumable() -> None:
    w, r = [np.zeros(50)], [FitRes("a", [np.ones(50)], 1)]
    a, b = DPFedAvg(noise_seed=7), DPFedAvg(noise_seed=7)
    first = a.aggregate_train(1, w, r, [])[0]
    np.testing.assert_array_equal(first, b.aggregate_train(1, w, r, [])[0])
    assert not np.array_equal(first, DPFedAvg(noise_seed=8).aggregate_train(1, w, r, [])[0])
    saved = a.state_dict()
    second = a.aggregate_train(2, w, r, [])[0]
    c = build_strategy("dp_fedavg", noise_seed=99)
    c.load_state_dict(saved)
    np.testing.assert_array_equal(second, c.aggregate_train(2, w, r, [])[0])
    assert not np.array_equal(first, second)


def test_unseeded_noise_comes_from_fresh_entropy() -> None:
    """Without noise_seed two runs must not share their noise: noise from a known seed (the old
    default 0) can be regenerated and subtracted from the released model."""
    w, r = [np.zeros(1000)], [FitRes("a", [np.zeros(1000)], 1)]
    a, b = DPFedAvg(noise_multiplier=1.0), build_strategy("dp_fedavg", noise_multiplier=1.0)
    assert a.noise_seed is None and a.describe()["noise_seed"] is None
    first, other = a.aggregate_train(1, w, r, [])[0], b.aggregate_train(1, w, r, [])[0]
    assert np.std(first) > 0.5 and not np.allclose(first, other)
    seeded = DPFedAvg(noise_multiplier=1.0, noise_seed=0).aggregate_train(1, w, r, [])[0]
    assert not np.allclose(first, seeded)
    np.testing.assert_array_equal(seeded, DPFedAvg(noise_multiplier=1.0, noise_seed=0).aggregate_train(1, w, r, [])[0])


def test_float32_kept_and_edges() -> None:
    s = DPFedAvg()
    out = s.aggregate_train(1, [np.zeros(3, np.float32)], [FitRes("a", [np.ones(3, np.float32)], 1)], [])
    assert out[0].dtype == np.float32
    w = [arr(1)]
    assert s.aggregate_train(1, w, [], []) is w
    for bad in ({"noise_multiplier": -1}, {"clip_norm": 0}, {"delta": 0}, {"delta": 1},
                {"expected_clients_per_round": 0}, {"num_clients": 0}, {"server_lr": 0},
                {"server_momentum": -0.1}, {"server_momentum": 1.0}, {"target_unclipped_quantile": 0},
                {"target_unclipped_quantile": 1}, {"clip_learning_rate": 0}, {"clipped_count_stddev": -1}):
        with pytest.raises(ValueError):
            DPFedAvg(**bad)


# --------------------------------------------------------------------------- privacy accounting


def test_epsilon_increases_with_rounds() -> None:
    s = DPFedAvg(noise_multiplier=1.0, fraction_fit=0.5)
    eps = [s.epsilon(t) for t in range(0, 41, 5)]
    assert eps[0] == 0.0
    assert all(b > a for a, b in pairwise(eps))


def test_epsilon_matches_dp_accounting_directly() -> None:
    # q = 3/10, z = 2, 100 rounds, delta = 1e-5, built here through dp_accounting's own API
    s = DPFedAvg(noise_multiplier=2.0, fraction_fit=0.3, num_clients=10, delta=1e-5)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.3, dp_accounting.GaussianDpEvent(2.0)), 100
    )
    expected = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    assert s.epsilon(100) == pytest.approx(expected, rel=1e-9)
    assert s.round_report(100) == {"dp_epsilon": pytest.approx(expected, rel=1e-9), "dp_delta": 1e-5}


def _exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The optimal epsilon of one Gaussian mechanism (sensitivity 1), Balle & Wang 2018 Thm 8:
    delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s), solved by bisection."""
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if phi(1 / (2 * sigma) - mid * sigma) - math.exp(mid) * phi(-1 / (2 * sigma) - mid * sigma) > delta:
            lo = mid
        else:
            hi = mid
    return hi


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (1.0, 10), (5.0, 100)])
def test_full_participation_epsilon_is_plausible(z: float, rounds: int) -> None:
    # q = 1: t Gaussians with multiplier z = one Gaussian with z / sqrt(t). RDP epsilon must lie
    # between the exact optimum and the classic RDP conversion min_a [t a / (2 z^2) + log(1/d) / (a - 1)].
    delta = 1e-5
    eps = DPFedAvg(noise_multiplier=z, delta=delta).epsilon(rounds)
    lower = _exact_gaussian_epsilon(z / math.sqrt(rounds), delta)
    upper = min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in np.arange(1.01, 500, 0.01))
    assert lower < eps < upper
    # z = 1, one round: about 4.4 (exact) .. 5.3 (classic)
    if (z, rounds) == (1.0, 1):
        assert 4.3 < eps < 5.3


def test_no_noise_means_no_privacy() -> None:
    s = DPFedAvg(noise_multiplier=0.0)
    assert s.epsilon(3) == math.inf
    assert s.round_report(3) == {"dp_epsilon": None, "dp_delta": 1e-5}
    d = s.describe()
    assert d["noise_multiplier"] == 0.0 and d["clip_norm"] == 1.0 and d["delta"] == 1e-5
