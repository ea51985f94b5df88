"""DP-FedAvg with fixed clipping: McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018, Algorithm 1 (as TFF's ``DifferentiallyPrivateFactory.gaussian_fixed``).

Client-level differential privacy, server side. Per round, with ``x`` the global model::

    Delta_k  = pi(w_k - x, S) = (w_k - x) * min(1, S / ||w_k - x||)       (clip, L2 over all tensors)
    Delta    = (sum_k Delta_k + N(0, (z S)^2 I)) / D                      (fixed denominator D)
    v       <- beta v + Delta                                             (server momentum, beta >= 0)
    x       <- x + eta v

i.e. noise of std ``z S / D`` per coordinate on the average. ``server_momentum`` beta (default 0:
plain DP-FedAvg, ``v = Delta``) is the server optimizer of FedAvgM (Hsu et al. 2019) applied to
the noised average, as McMahan et al. 2018 (Section 3, momentum 0.9 at the server) and TFF's DP
aggregator composed with a server optimizer do; it is post-processing of the released average,
so it costs no privacy. Every hospital counts the same
(TFF's fixed-clip aggregator; McMahan et al.'s ``w_k`` capped at 1). ``D`` is
``expected_clients_per_round`` when given, else ``num_fit_clients(num_clients)`` when
``num_clients`` is given, else the number of hospitals selected by the last ``configure_train``
(not the number that answered: the denominator must not depend on the data), else the number
of results.

Adaptive clipping (``target_unclipped_quantile`` gamma set; Andrew et al., "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021, Algorithm 1, as TFF's
``DifferentiallyPrivateFactory.gaussian_adaptive``): the clip norm follows the gamma-quantile of
the update norms instead of staying at ``clip_norm`` (then only its start), so the noise
``z_Delta C / D`` shrinks as the updates do (under a decaying learning rate they shrink ten-fold
while a fixed clip keeps the noise where it was). Per round, with ``C`` the current clip::

    b_k      = 1[||w_k - x|| <= C] - 1/2                                  (centred: sensitivity 1/2)
    b        = (sum_k b_k + N(0, sigma_b^2)) / D + 1/2                    (noised unclipped fraction)
    C       <- C * exp(-eta_C (b - gamma))                                (geometric update)

The update is clipped to and noised with the ``C`` of its round, at the value noise multiplier
``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``: the pair (update sum at ``z_Delta``, count at
``sigma_b``) is one Gaussian mechanism of noise multiplier ``z`` (Andrew et al., Theorem 1), so
``noise_multiplier`` z, and with it the accounting below, keeps its meaning. ``sigma_b``
(``clipped_count_stddev``) defaults to ``0.05 D`` and ``eta_C`` (``clip_learning_rate``) to 0.2,
TFF's and the paper's defaults; a ``sigma_b`` too small for ``z`` (``2 sigma_b <= z``) is
refused.

Privacy (:meth:`epsilon`): ``t`` rounds of the Poisson-subsampled Gaussian mechanism with
sampling probability ``q`` and noise multiplier ``z``, RDP-accounted with ``dp_accounting``
(:func:`hemafed.privacy.rdp_epsilon`), at ``delta`` (default 1e-5). ``q`` is
``num_fit_clients(num_clients) / num_clients`` when ``num_clients`` is given, else
``fraction_fit``. Caveats: the server samples a fixed-size subset without replacement, not
Poisson; accounting it as Poisson with the same ``q`` is the usual approximation (as TFF's
tutorials do). The guarantee needs a trusted server: it sees the unclipped models.

Noise comes from ``numpy.random.default_rng(noise_seed)``. Without ``noise_seed`` (the default)
numpy seeds the generator from the operating system's entropy (``SeedSequence``, 128 bits):
noise drawn from a known seed can be regenerated and subtracted by anyone who knows the seed, which
voids the guarantee, so a fixed seed is for reproducible experiments only. The generator's state is
in :meth:`state_dict` (the aggregator's checkpoint) so a resumed run draws the noise it would have
drawn. The hospitals sampled each round (``fraction_fit < 1``) must be as secret as the noise:
the amplification by sampling that the accounting credits assumes the adversary does not know
which hospitals took part. Without ``noise_seed`` they are drawn by the same entropy-seeded
generator, not by the server's generator (seeded with the run's SEED, which the run's config
records); with ``noise_seed`` (a reproducible experiment, whose guarantee the known seed voids
anyway) by the server's generator, as every other strategy draws them. Caveat: numpy's PCG64 is
not a cryptographically secure generator (nor is the generator of Opacus' default, non-secure mode).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hemafed.privacy import rdp_epsilon
from hemafed_aggregator.aggregation import check_same_structure, clip_by_global_norm, copy_weights, subtract
from hemafed_aggregator.strategies.base import ClientRef, Failure, FitIns, FitRes, Strategy, Weights


class DPFedAvg(Strategy):
    name = "dp_fedavg"

    def __init__(
        self,
        *,
        noise_multiplier: float = 1.0,
        clip_norm: float = 1.0,
        expected_clients_per_round: float | None = None,
        num_clients: int | None = None,
        delta: float = 1e-5,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        target_unclipped_quantile: float | None = None,
        clip_learning_rate: float = 0.2,
        clipped_count_stddev: float | None = None,
        noise_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if clip_norm <= 0:
            raise ValueError("clip_norm must be positive")
        if expected_clients_per_round is not None and expected_clients_per_round <= 0:
            raise ValueError("expected_clients_per_round must be positive")
        if num_clients is not None and num_clients < 1:
            raise ValueError("num_clients must be >= 1")
        if not 0.0 < delta < 1.0:
            raise ValueError("delta must be in (0, 1)")
        if server_lr <= 0:
            raise ValueError("server_lr must be positive")
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError("server_momentum must be in [0, 1)")
        if target_unclipped_quantile is not None and not 0.0 < target_unclipped_quantile < 1.0:
            raise ValueError("target_unclipped_quantile must be in (0, 1)")
        if clip_learning_rate <= 0:
            raise ValueError("clip_learning_rate must be positive")
        if clipped_count_stddev is not None and clipped_count_stddev < 0:
            raise ValueError("clipped_count_stddev must be >= 0")
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.expected_clients_per_round = expected_clients_per_round
        self.num_clients = num_clients
        self.delta = delta
        self.server_lr = server_lr
        self.server_momentum = float(server_momentum)
        self.target_unclipped_quantile = target_unclipped_quantile
        self.clip_learning_rate = float(clip_learning_rate)
        self.clipped_count_stddev = clipped_count_stddev
        #: the clip norm of the next round: ``clip_norm`` throughout when fixed, its start when adaptive
        self.clip = self.clip_norm
        #: the last round's clip and noised unclipped fraction (adaptive clipping), for the round report
        self.last_clip: float | None = None
        self.last_unclipped_fraction: float | None = None
        if self.adaptive and (clipped_count_stddev is not None or expected_clients_per_round or num_clients):
            self.value_noise_multiplier(0)  # sigma_b known now: refuse one the budget cannot carry at start-up
        #: the server's momentum buffer (float64), None until the first aggregated round
        self.velocity: list[np.ndarray] | None = None
        self.noise_seed = noise_seed
        self.rng = np.random.default_rng(noise_seed)  # None: fresh OS entropy
        self.last_selected: int | None = None
        #: L2 norms of the last round's updates before clipping, by hospital (for monitoring)
        self.last_norms: dict[str, float] = {}

    # ------------------------------------------------------------------ mechanism

    @property
    def sampling_probability(self) -> float:
        """q: the fraction of hospitals taking part in a round."""
        if self.num_clients is not None:
            return self.num_fit_clients(self.num_clients) / self.num_clients
        return self.fraction_fit

    def denominator(self, num_results: int) -> float:
        if self.expected_clients_per_round is not None:
            return float(self.expected_clients_per_round)
        if self.num_clients is not None:
            return float(self.num_fit_clients(self.num_clients))
        if self.last_selected:
            return float(self.last_selected)
        return float(num_results)

    @property
    def adaptive(self) -> bool:
        return self.target_unclipped_quantile is not None

    def count_stddev(self, num_results: int) -> float:
        """sigma_b: std of the noise on the count of unclipped updates (adaptive clipping)."""
        if self.clipped_count_stddev is not None:
            return float(self.clipped_count_stddev)
        return 0.05 * self.denominator(num_results)

    def value_noise_multiplier(self, num_results: int) -> float:
        """z_Delta, the noise multiplier on the update sum: ``z``, or with adaptive clipping
        ``(z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al. 2021, Theorem 1)."""
        z = self.noise_multiplier
        if not self.adaptive or z == 0:
            return z
        sigma_b = self.count_stddev(num_results)
        if 2 * sigma_b <= z:
            raise ValueError(f"clipped_count_stddev {sigma_b:g} is too small for noise_multiplier {z:g}: "
                             "the count alone would spend the budget (need 2 sigma_b > z)")
        return (z ** -2 - (2 * sigma_b) ** -2) ** -0.5

    def noise_std(self, num_results: int) -> float:
        """Per-coordinate std of the noise on the averaged update: ``z_Delta C / D``."""
        return self.value_noise_multiplier(num_results) * self.clip / self.denominator(num_results)

    def configure_train(
        self, rnd: int, weights: Weights, clients: list[ClientRef], rng: np.random.Generator
    ) -> list[tuple[ClientRef, FitIns]]:
        # the draw must be secret in a deployment (see the module docstring): the run-seeded server
        # generator only for a reproducible experiment (noise_seed given)
        chosen = super().configure_train(rnd, weights, clients, rng if self.noise_seed is not None else self.rng)
        self.last_selected = len(chosen)
        return chosen

    def aggregate_train(self, rnd: int, weights: Weights, results: list[FitRes], failures: list[Failure]) -> Weights:
        if not results:
            return weights
        check_same_structure([weights, *(r.weights for r in results)])
        sigma = self.value_noise_multiplier(len(results)) * self.clip  # refuses a bad sigma_b first
        total = [np.zeros(np.shape(w), dtype=np.float64) for w in weights]
        self.last_norms = {}
        for r in results:
            clipped, norm = clip_by_global_norm(subtract(
                [np.asarray(x, dtype=np.float64) for x in r.weights], [np.asarray(w, dtype=np.float64) for w in weights]
            ), self.clip)
            self.last_norms[r.hospital_id] = norm
            for acc, c in zip(total, clipped):
                acc += c
        d = self.denominator(len(results))
        noised = [(t + self.rng.normal(0.0, sigma, size=t.shape)) / d if sigma > 0 else t / d for t in total]
        if self.adaptive:
            self._update_clip(len(results), d)
        if self.server_momentum > 0:
            self.velocity = noised if self.velocity is None else [
                self.server_momentum * v + u for v, u in zip(self.velocity, noised)]
            noised = self.velocity
        return [(np.asarray(w, dtype=np.float64) + self.server_lr * u).astype(w.dtype) for w, u in zip(weights, noised)]

    def _update_clip(self, num_results: int, d: float) -> None:
        """C <- C exp(-eta_C (b - gamma)), b the noised fraction of updates within this round's C."""
        count = sum((n <= self.clip) - 0.5 for n in self.last_norms.values())
        if self.noise_multiplier > 0:  # sigma_b > z / 2 > 0 here (value_noise_multiplier checked it)
            count += self.rng.normal(0.0, self.count_stddev(num_results))
        self.last_clip = self.clip
        self.last_unclipped_fraction = float(count / d + 0.5)
        self.clip = float(self.clip * math.exp(-self.clip_learning_rate
                                               * (self.last_unclipped_fraction - self.target_unclipped_quantile)))

    # ------------------------------------------------------------------ privacy

    def epsilon(self, rounds: int) -> float:
        """Client-level epsilon at ``self.delta`` after ``rounds`` rounds (``inf`` without noise)."""
        return rdp_epsilon(self.sampling_probability, self.noise_multiplier, rounds, self.delta)

    def round_report(self, rnd: int) -> dict[str, Any]:
        """``{"dp_epsilon", "dp_delta"}`` after round ``rnd``; epsilon is None when infinite (z = 0).
        With adaptive clipping also the round's clip (``dp_clip_norm``), its released unclipped
        fraction (``dp_unclipped_fraction``) and the next round's clip (``dp_next_clip_norm``)."""
        eps = self.epsilon(rnd)
        report: dict[str, Any] = {"dp_epsilon": eps if math.isfinite(eps) else None, "dp_delta": self.delta}
        if self.adaptive and self.last_clip is not None:
            report |= {"dp_clip_norm": self.last_clip, "dp_unclipped_fraction": self.last_unclipped_fraction,
                       "dp_next_clip_norm": self.clip}
        return report

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "last_selected": self.last_selected,
            "velocity": None if self.velocity is None else copy_weights(self.velocity),
            "clip": self.clip,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = state["rng"]
        self.last_selected = state.get("last_selected")
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else [np.array(v, dtype=np.float64) for v in velocity]
        self.clip = float(state.get("clip", self.clip_norm))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "expected_clients_per_round": self.expected_clients_per_round,
            "num_clients": self.num_clients,
            "delta": self.delta,
            "server_lr": self.server_lr,
            "server_momentum": self.server_momentum,
            "target_unclipped_quantile": self.target_unclipped_quantile,
            "clip_learning_rate": self.clip_learning_rate,
            "clipped_count_stddev": self.clipped_count_stddev,
            "noise_seed": self.noise_seed,
            "sampling_probability": self.sampling_probability,
        }
