"""Error rates of the regression gate by simulation (no timing): false alarms under H0 and power.

    .venv/bin/python bench/gate_error_rates.py [--sims 20000] [--n 360]

Each simulated evaluation has n samples; each sample is independently a loss (baseline right,
candidate wrong), a gain, or unchanged. "equivalent": losses and gains equally likely (no real
drop). "edge": true drop exactly --max-drop (the worst case of H0). "drop": a real drop.
"""
from __future__ import annotations

import argparse

import numpy as np

from edgecompile.verify import gate


def rate(rng, sims, n, p_loss, p_gain, margin):
    counts = rng.multinomial(n, [p_loss, p_gain, 1 - p_loss - p_gain], size=sims)
    return float(np.mean([gate.paired_binary_p(int(l), int(g), n, margin)[1] < gate.ALPHA for l, g, _ in counts]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=20000)
    ap.add_argument("--n", type=int, default=360)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"n = {args.n} samples, {args.sims} simulations per row, alpha = {gate.ALPHA}")
    print(f"{'case':<11} {'max_drop pt':>11} {'discordant %':>12} {'true drop pt':>12} {'fail rate':>9}")
    for max_drop in (0.0, 0.5, 1.0, 2.0):
        m = max_drop / 100
        for disc in (0.01, 0.03, 0.10):
            r = rate(rng, args.sims, args.n, disc / 2, disc / 2, m)
            print(f"{'equivalent':<11} {max_drop:>11.1f} {100 * disc:>12.1f} {0.0:>12.1f} {r:>9.4f}")
            if disc > m:
                r = rate(rng, args.sims, args.n, (disc + m) / 2, (disc - m) / 2, m)
                print(f"{'edge':<11} {max_drop:>11.1f} {100 * disc:>12.1f} {max_drop:>12.1f} {r:>9.4f}")
        for drop in (max_drop + 2.0, max_drop + 4.0):
            d = drop / 100
            r = rate(rng, args.sims, args.n, 0.005 + d, 0.005, m)
            print(f"{'drop':<11} {max_drop:>11.1f} {100 * (0.01 + d):>12.1f} {drop:>12.1f} {r:>9.4f}")


if __name__ == "__main__":
    main()
