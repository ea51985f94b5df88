"""Differential-privacy accounting shared by the aggregator and the hospitals.

Both uses are the (Poisson-)subsampled Gaussian mechanism composed over steps, accounted with
Rényi DP (Mironov 2017; Mironov, Talwar & Zhang 2019) through Google's ``dp_accounting``
(``dp_accounting.rdp.RdpAccountant``, add-or-remove-one neighbouring relation):

* sample-level DP-SGD on a hospital (Abadi et al. 2016, "Deep Learning with Differential
  Privacy"): q = batch / examples, one event per optimizer step -> :func:`dpsgd_epsilon`;
* client-level DP-FedAvg on the aggregator (McMahan et al. 2018): q = fraction of hospitals
  sampled per round, one event per round -> :func:`rdp_epsilon`.

``dp_accounting`` is imported lazily so :mod:`hemafed` stays importable without it.
"""

from __future__ import annotations

import logging
import math


def rdp_epsilon(sampling_probability: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """epsilon at ``delta`` after ``steps`` compositions of a Poisson-subsampled Gaussian with
    ``sampling_probability`` q and noise multiplier z (noise std / L2 sensitivity).

    ``q = 1`` is the plain Gaussian mechanism composed ``steps`` times. Returns 0.0 for no
    steps and ``math.inf`` for ``z = 0`` (no noise: no privacy).
    """
    if not 0.0 < sampling_probability <= 1.0:
        raise ValueError("sampling_probability must be in (0, 1]")
    if noise_multiplier < 0:
        raise ValueError("noise_multiplier must be >= 0")
    if steps < 0:
        raise ValueError("steps must be >= 0")
    if not 0.0 < delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting  # lazy: only the code that reports privacy needs it

    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_probability < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_probability, event)
    # dp_accounting logs (via absl) every fractional order whose series does not converge for
    # large q; it drops those orders itself, so the warnings are only noise in round logs.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(event, int(steps))
        return float(accountant.get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)


def dpsgd_steps(num_examples: int, batch_size: int, epochs: float, max_steps_per_epoch: int = 0) -> int:
    """Optimizer steps of DP-SGD training: ``ceil(epochs * num_examples / batch_size)`` (as
    TF Privacy's ``compute_dp_sgd_privacy``), or ``epochs * min(cap, ceil(n / batch))`` when the
    run caps steps per epoch (``FitConfig.max_steps_per_epoch > 0``)."""
    if num_examples <= 0 or batch_size <= 0 or epochs < 0:
        raise ValueError("num_examples and batch_size must be positive, epochs >= 0")
    if max_steps_per_epoch > 0:
        return math.ceil(epochs * min(max_steps_per_epoch, math.ceil(num_examples / batch_size)))
    return math.ceil(epochs * num_examples / batch_size)


def dpsgd_epsilon(
    num_examples: int,
    batch_size: int,
    epochs: float,
    noise_multiplier: float,
    delta: float = 1e-5,
    *,
    max_steps_per_epoch: int = 0,
) -> float:
    """Sample-level epsilon of DP-SGD (Abadi et al. 2016, Section 3.1, with RDP accounting):
    Poisson sampling with ``q = batch_size / num_examples`` for
    :func:`dpsgd_steps` steps, Gaussian noise multiplier ``noise_multiplier``.

    For one hospital's local training in one round; across rounds the hospital's total is the
    composition over the rounds it took part in (``epochs`` = all local epochs so far).
    """
    if batch_size > num_examples:
        raise ValueError("batch_size must not exceed num_examples (q = batch/num_examples <= 1)")
    steps = dpsgd_steps(num_examples, batch_size, epochs, max_steps_per_epoch)
    return rdp_epsilon(batch_size / num_examples, noise_multiplier, steps, delta)


def noise_multiplier_for(target_epsilon: float, sampling_probability: float, steps: int, delta: float,
                         *, tolerance: float = 1e-3, max_noise: float = 1e4) -> float:
    """The smallest noise multiplier z (to ``tolerance``) whose :func:`rdp_epsilon` after ``steps``
    events at ``sampling_probability`` is at most ``target_epsilon`` at ``delta``: the noise a
    federation must add to stay within a privacy budget (epsilon decreases as z grows)."""
    if target_epsilon <= 0:
        raise ValueError("target_epsilon must be positive")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    low, high = 0.0, 1.0
    while rdp_epsilon(sampling_probability, high, steps, delta) > target_epsilon:
        low, high = high, high * 2
        if high > max_noise:
            raise ValueError(f"epsilon {target_epsilon} is out of reach below noise multiplier {max_noise}")
    while high - low > tolerance:
        mid = (low + high) / 2
        if rdp_epsilon(sampling_probability, mid, steps, delta) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def dp_fedavg_noise_to_signal(noise_multiplier: float, clients_per_round: int, num_parameters: int) -> float:
    """Expected L2 norm of DP-FedAvg's noise on the averaged update, in units of the clip norm S:
    the noise is N(0, (z S / m)^2 I) over d coordinates, so its norm is about z sqrt(d) / m, while
    the averaged clipped update has norm at most S. Above 1 the noise outweighs any update."""
    if clients_per_round < 1 or num_parameters < 1 or noise_multiplier < 0:
        raise ValueError("clients_per_round and num_parameters must be >= 1, noise_multiplier >= 0")
    return noise_multiplier * math.sqrt(num_parameters) / clients_per_round
