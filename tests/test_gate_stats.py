"""The gate's statistics (edgecompile.verify.gate): exact values, restricted MLEs, and the error rates by simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgecompile.verify import gate


def test_binomial_tail_matches_exact_counts():
    # P(X >= 7), X ~ Bin(10, 1/2) = (120 + 45 + 10 + 1) / 1024
    assert gate.binom_sf(7, 10, 0.5) == pytest.approx(176 / 1024, rel=1e-12)
    assert gate.binom_sf(0, 10, 0.3) == 1.0 and gate.binom_sf(11, 10, 0.3) == 0.0
    assert gate.binom_sf(3, 5, 0.2) == pytest.approx(sum(math.comb(5, k) * 0.2**k * 0.8 ** (5 - k) for k in (3, 4, 5)))
    assert gate.normal_sf(1.6448536269514722) == pytest.approx(0.05, abs=1e-9)


def test_exact_mcnemar_counts_only_discordant_pairs():
    base = np.array([1] * 100 + [0] * 10)
    cand = base.copy()
    cand[:5] = 0                               # 5 losses, no gains: p = 2^-5
    r = gate.paired_binary(base, cand, margin=0.0)
    assert (r.details["losses"], r.details["gains"]) == (5, 0)
    assert r.p_value == pytest.approx(1 / 32) and r.rejects()
    cand[:4] = 1                               # 1 loss: p = 1/2
    assert gate.paired_binary(base, cand, 0.0).p_value == pytest.approx(0.5)
    assert not gate.paired_binary(base, base, 0.0).rejects()
    assert gate.mcnemar_exact_p(4, 0) == pytest.approx(1 / 16)       # 4 losses are not enough at 5 %
    assert gate.mcnemar_exact_p(3, 3) > 0.5


def _tango_restricted_mle(losses, gains, n, d):
    b = losses * (1 - d) + gains * (1 - 3 * d) - 2 * (n - losses - gains) * d
    return (b + math.sqrt(b * b + 8 * n * gains * d * (1 - d))) / (4 * n)


@pytest.mark.parametrize("losses,gains,n,d", [(10, 3, 360, 0.01), (30, 5, 200, 0.05), (2, 9, 1000, 0.003)])
def test_tango_uses_the_likelihood_maximum_on_the_null_boundary(losses, gains, n, d):
    q = _tango_restricted_mle(losses, gains, n, d)
    m = n - losses - gains
    score = losses / (q + d) + gains / q - 2 * m / (1 - 2 * q - d)      # d loglik / d p_gain
    assert abs(score) < 1e-6 * n
    grid = np.linspace(1e-6, (1 - d) / 2 - 1e-6, 20001)
    ll = losses * np.log(grid + d) + gains * np.log(grid) + m * np.log(1 - 2 * grid - d)
    assert q == pytest.approx(grid[ll.argmax()], abs=1e-4)
    num = losses - gains - n * d
    z = (num - 0.5 if num > 0 else num) / math.sqrt(n * (2 * q + d * (1 - d)))     # continuity-corrected
    assert gate.tango_p(losses, gains, n, d) == pytest.approx(gate.normal_sf(z))


def test_tango_with_zero_margin_is_the_mcnemar_statistic_and_p_falls_with_losses():
    z = (12 - 4 - 0.5) / math.sqrt(16)
    assert gate.tango_p(12, 4, 500, 0.0) == pytest.approx(gate.normal_sf(z))
    assert gate.tango_p(3, 9, 500, 0.0) > 0.5
    ps = [gate.tango_p(k, 2, 360, 0.01) for k in range(0, 30)]
    assert all(a >= b for a, b in zip(ps, ps[1:]))
    # a 1-pt margin tolerates what a zero margin does not
    assert gate.tango_p(6, 0, 360, 0.01) > 0.05 > gate.mcnemar_exact_p(6, 0)


@pytest.mark.parametrize(
    "x1,n1,x2,n2,d", [(340, 360, 320, 360, 0.02), (90, 100, 150, 200, 0.05), (50, 100, 60, 100, 0.1)]
)
def test_farrington_manning_restricted_mle(x1, n1, x2, n2, d):
    grid = np.linspace(1e-7, 1 - d - 1e-7, 200001)
    ll = x1 * np.log(grid + d) + (n1 - x1) * np.log(1 - grid - d) + x2 * np.log(grid) + (n2 - x2) * np.log(1 - grid)
    q2 = grid[ll.argmax()]
    q1 = q2 + d
    z = (x1 / n1 - x2 / n2 - d) / math.sqrt(q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2)
    assert gate.farrington_manning_p(x1, n1, x2, n2, d) == pytest.approx(gate.normal_sf(z), rel=1e-3, abs=1e-9)


def test_bootstrap_test_on_paired_errors():
    rng = np.random.default_rng(1)
    base = rng.gamma(2.0, 1.0, 300)
    assert gate.paired_continuous(base, base, higher_is_better=False, margin=0.0, relative=True).p_value == 1.0
    worse = base * 1.3 + rng.normal(0, 0.05, 300)              # 30 % more error
    r = gate.paired_continuous(base, worse, higher_is_better=False, margin=0.05, relative=True)
    assert r.rejects() and r.drop == pytest.approx(float(np.mean(worse - base)))
    assert r.ci[0] < r.drop < r.ci[1]
    # allowed by a 50 % relative bound
    assert not gate.paired_continuous(base, worse, higher_is_better=False, margin=0.5, relative=True).rejects()


def _alarm_rate(rng, sims, n, p_loss, p_gain, margin):
    """Share of simulated paired evaluations the gate fails. Each sample independently is a loss
    (baseline right, candidate wrong), a gain, or unchanged; only these counts enter the test."""
    counts = rng.multinomial(n, [p_loss, p_gain, 1 - p_loss - p_gain], size=sims)
    return float(np.mean([gate.paired_binary_p(int(l), int(g), n, margin)[1] < gate.ALPHA for l, g, _ in counts]))


def test_simulated_counts_match_real_paired_vectors():
    rng = np.random.default_rng(0)
    base = rng.random(360) < 0.95
    cand = base.copy()
    cand[np.flatnonzero(base)[:7]] = False
    cand[np.flatnonzero(~base)[:2]] = True
    r = gate.paired_binary(base, cand, 0.01)
    assert (r.details["losses"], r.details["gains"]) == (7, 2)
    assert r.p_value == gate.paired_binary_p(7, 2, 360, 0.01)[1]
    assert r.drop == pytest.approx(5 / 360)


@pytest.mark.parametrize("max_drop_pt", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("discord", [0.01, 0.03, 0.10])
def test_false_alarm_rate_on_equivalent_rebuilds_is_at_most_5_percent(max_drop_pt, discord):
    """Rebuilds that lose and gain samples at the same rate (no real drop) fail <= 5 % of the time."""
    rate = _alarm_rate(np.random.default_rng(12), 4000, 360, discord / 2, discord / 2, max_drop_pt / 100)
    assert rate <= 0.05


@pytest.mark.parametrize("max_drop_pt,discord", [(0.0, 0.03), (0.5, 0.02), (1.0, 0.03), (1.0, 0.10), (2.0, 0.06)])
def test_false_alarm_rate_at_the_edge_of_the_null(max_drop_pt, discord):
    """True drop exactly max_drop (the hardest null case): alarms stay at alpha (MC s.e. ~0.35 %)."""
    d = max_drop_pt / 100
    rate = _alarm_rate(np.random.default_rng(7), 4000, 360, (discord + d) / 2, (discord - d) / 2, d)
    assert rate <= 0.055


@pytest.mark.parametrize("n,max_drop_pt", [(100, 0.0), (100, 1.0), (360, 0.5), (360, 2.0)])
def test_exact_size_of_the_gate_over_the_whole_null_boundary(n, max_drop_pt):
    """Not sampled: the exact probability of failing a build whose true drop is exactly max_drop,
    summed over every (losses, gains) outcome, maximised over the share of discordant samples."""
    d = max_drop_pt / 100
    pairs = [(lo, ga) for lo in range(n + 1) for ga in range(n + 1 - lo)]
    lo = np.array([p[0] for p in pairs])
    ga = np.array([p[1] for p in pairs])
    fails = np.array([gate.paired_binary_p(a, b, n, d)[1] < gate.ALPHA for a, b in pairs])
    logfact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    worst = 0.0
    for disc in np.linspace(d + 1e-6, 0.4, 160):
        p_loss, p_gain = (disc + d) / 2, (disc - d) / 2
        logp = (logfact[n] - logfact[lo] - logfact[ga] - logfact[n - lo - ga] + lo * np.log(p_loss)
                + ga * np.log(p_gain) + (n - lo - ga) * np.log1p(-disc))
        worst = max(worst, float(np.exp(logp[fails]).sum()))
    assert worst <= 0.05 + 1e-9


@pytest.mark.parametrize("true_drop_pt,bound_pt,power", [(5.0, 1.0, 0.95), (4.0, 0.0, 0.95), (3.0, 1.0, 0.5)])
def test_power_against_a_real_drop(true_drop_pt, bound_pt, power):
    """Real drops (0.5 % of samples gained, 0.5 % + drop lost) on 360 samples are caught."""
    d = true_drop_pt / 100
    rate = _alarm_rate(np.random.default_rng(3), 2000, 360, 0.005 + d, 0.005, bound_pt / 100)
    assert rate >= power

