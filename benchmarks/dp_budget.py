"""What client-level DP (DP-FedAvg, McMahan et al. 2018) costs a federation of a given size.

    .venv/bin/python benchmarks/dp_budget.py --epsilon 8 --rounds 12 --parameters 290000 \
        --hospitals 5 10 100 1000 10000

For each federation size it prints the smallest noise multiplier z that keeps epsilon at or
below the budget (RDP accounting with dp_accounting, hemafed.privacy) and the expected norm of
the noise on the averaged update in units of the clip norm (z sqrt(d) / m, m hospitals per
round): the averaged clipped update is at most 1 clip norm, so a ratio far above 1 means the
noise drowns every update. ``--parameters`` is the number of exchanged parameters (the run's
``communication.exchanged_parameters``; cnn at 32 px: 73k, cnn-wide: 290k).

Nothing is trained: the figures follow from the mechanism's definition.
"""

from __future__ import annotations

import argparse

from hemafed.privacy import dp_fedavg_noise_to_signal, noise_multiplier_for, rdp_epsilon


def rows(epsilon: float, delta: float, rounds: int, parameters: int, hospitals: list[int],
         fraction: float) -> list[dict[str, float]]:
    out = []
    for n in hospitals:
        m = max(1, round(fraction * n))
        q = m / n
        z = noise_multiplier_for(epsilon, q, rounds, delta)
        out.append({"hospitals": n, "per_round": m, "q": q, "z": z,
                    "epsilon": rdp_epsilon(q, z, rounds, delta),
                    "noise_to_signal": dp_fedavg_noise_to_signal(z, m, parameters)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--parameters", type=int, default=290_000, help="exchanged parameters d")
    p.add_argument("--fraction", type=float, default=1.0, help="hospitals sampled per round (FRACTION_FIT)")
    p.add_argument("--hospitals", type=int, nargs="+", default=[5, 10, 100, 1000, 10_000])
    a = p.parse_args(argv)
    print(f"client-level DP-FedAvg: epsilon <= {a.epsilon} at delta {a.delta}, {a.rounds} rounds, "
          f"{a.parameters:,} parameters, fraction {a.fraction} of the hospitals per round")
    print(f"{'hospitals':>10} {'per round':>10} {'q':>7} {'z needed':>9} {'epsilon':>8} {'noise/clip':>11}")
    for r in rows(a.epsilon, a.delta, a.rounds, a.parameters, a.hospitals, a.fraction):
        print(f"{r['hospitals']:>10,} {r['per_round']:>10,} {r['q']:>7.3f} {r['z']:>9.3f} {r['epsilon']:>8.2f} "
              f"{r['noise_to_signal']:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
