"""The statistics of the regression gate: pure functions on per-sample results, no I/O.

Every test here is one-sided with the null hypothesis on the *safe* side:

    H0: true drop <= max_drop        H1: true drop > max_drop

so a build fails only when the data show (at level alpha) that it lost more than it may; noise
alone does not fail it. "Drop" is baseline minus candidate in the direction of the metric.

* Correct/incorrect samples (top-1, agreement), paired: with a zero margin the exact McNemar test
  on the discordant pairs (losses ~ Binomial(losses + gains, 1/2) at the boundary); with a positive
  margin Tango's score test for a difference of paired proportions (restricted MLE under H0, with a
  continuity correction).
* Continuous per-sample scores (errors, cosine), paired: a bootstrap test on the paired
  differences, re-centred to the null boundary.
* Unpaired fallbacks (different evaluation data): Farrington-Manning score test for two
  proportions, and a Welch-style normal test for means.
* Latency: a one-sided sign test over interleaved rounds ("more than half of the rounds are slower
  than the allowed ratio").

Only numpy and the standard library (the runtime core must not need scipy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALPHA = 0.05


@dataclass
class TestResult:
    """Outcome of one gate test. `drop` and `ci` are in the metric's own units (fractions for
    top-1, metric units for errors); `margin` is max_drop converted to the same units."""

    method: str
    drop: float
    margin: float
    p_value: float
    ci: tuple[float, float]
    n: int
    details: dict = field(default_factory=dict)

    def rejects(self, alpha: float = ALPHA) -> bool:
        return self.p_value < alpha


# -- distributions (no scipy) --------------------------------------------------------------------

def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


# -- paired correct/incorrect ----------------------------------------------------------------

def discordant(baseline: np.ndarray, candidate: np.ndarray) -> tuple[int, int, int]:
    """(losses, gains, n): samples the baseline got right and the candidate wrong, and vice versa."""
    b = np.asarray(baseline).astype(bool).reshape(-1)
    c = np.asarray(candidate).astype(bool).reshape(-1)
    if b.shape != c.shape:
        raise ValueError(f"paired results differ in length: {b.size} vs {c.size}")
    return int(np.sum(b & ~c)), int(np.sum(~b & c)), int(b.size)


def mcnemar_exact_p(losses: int, gains: int) -> float:
    """One-sided exact McNemar p-value for H0 'the candidate is not worse' (margin 0)."""
    return binom_sf(losses, losses + gains, 0.5)


def tango_p(losses: int, gains: int, n: int, margin: float) -> float:
    """One-sided p-value of Tango's score test, H0: p_loss - p_gain <= margin (0 <= margin < 1).

    The variance is evaluated at the maximum-likelihood p_gain restricted to the null boundary
    p_loss = p_gain + margin. A continuity correction of 1/2 count keeps the test at its level: the
    exact worst-case size over the nuisance P(discordant) is <= 5.1 % for n = 100..1000 and margins
    0.1..5 pt (7.6 % without it; see tests/test_gate_stats.py and bench/gate_error_rates.py)."""
    if n == 0:
        return 1.0
    d = margin
    m = n - losses - gains
    b = losses * (1 - d) + gains * (1 - 3 * d) - 2 * m * d
    c = gains * d * (1 - d)
    q = (b + math.sqrt(b * b + 8 * n * c)) / (4 * n)          # restricted MLE of p_gain
    var = n * (2 * q + d * (1 - d))
    num = losses - gains - n * d
    if num > 0:
        num = max(num - 0.5, 0.0)                              # continuity correction
    if var <= 0:
        return 1.0 if num <= 0 else 0.0
    return normal_sf(num / math.sqrt(var))


def paired_binary_p(losses: int, gains: int, n: int, margin: float) -> tuple[str, float]:
    """(method, one-sided p-value) from the discordant counts; `margin` is the allowed drop as a fraction."""
    if margin <= 0:
        return "exact McNemar (one-sided)", mcnemar_exact_p(losses, gains)
    return "Tango score test, paired (one-sided)", tango_p(losses, gains, n, margin)


def paired_binary(baseline: np.ndarray, candidate: np.ndarray, margin: float, *, seed: int = 0) -> TestResult:
    """Gate test for paired correct/incorrect results; `margin` is the allowed drop as a fraction."""
    losses, gains, n = discordant(baseline, candidate)
    method, p = paired_binary_p(losses, gains, n, margin)
    diff = np.asarray(baseline, np.float64).reshape(-1) - np.asarray(candidate, np.float64).reshape(-1)
    return TestResult(method, (losses - gains) / n if n else 0.0, margin, p, paired_ci(diff, seed=seed), n,
                      {"losses": losses, "gains": gains})


# -- paired continuous ----------------------------------------------------------------------

def paired_ci(diff: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences."""
    x = np.asarray(diff, np.float64).reshape(-1)
    if x.size == 0:
        return (float("nan"), float("nan"))
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = _boot_means(x, n_boot, rng)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 250) -> np.ndarray:
    out = np.empty(n_boot)
    for i in range(0, n_boot, chunk):
        k = min(chunk, n_boot - i)
        out[i:i + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    return out


def bootstrap_p(diff: np.ndarray, margin: float, *, n_boot: int = 2000, seed: int = 0) -> float:
    """One-sided paired bootstrap p-value for H0: E[diff] <= margin.

    The differences are shifted so that their mean sits on the null boundary, and the p-value is the
    share of resampled means at least as far above it as the observed one (with the +1 correction)."""
    x = np.asarray(diff, np.float64).reshape(-1)
    if x.size == 0:
        return 1.0
    observed = float(x.mean())
    if observed <= margin:
        return 1.0 if x.std() == 0 else _boot_tail(x, observed, n_boot, seed)
    if x.std() == 0:
        return 0.0
    return _boot_tail(x, observed - margin, n_boot, seed)


def _boot_tail(x: np.ndarray, excess: float, n_boot: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    centred = x - x.mean()
    means = _boot_means(centred, n_boot, rng)
    return float((1 + np.sum(means >= excess)) / (n_boot + 1))


def paired_continuous(baseline: np.ndarray, candidate: np.ndarray, *, higher_is_better: bool, margin: float,
                      relative: bool, n_boot: int = 2000, seed: int = 0) -> TestResult:
    """Gate test for paired per-sample scores.

    For an error metric (`relative=True`, lower is better) the bound is relative: H0: mean(cand) <=
    (1 + margin) * mean(base), tested on d_i = cand_i - (1 + margin) * base_i against 0. Otherwise
    H0: mean(base - cand) <= margin (absolute, metric units; flipped when lower is better)."""
    b = np.asarray(baseline, np.float64).reshape(-1)
    c = np.asarray(candidate, np.float64).reshape(-1)
    if b.shape != c.shape:
        raise ValueError(f"paired results differ in length: {b.size} vs {c.size}")
    sign = 1.0 if higher_is_better else -1.0
    drop_i = sign * (b - c)
    if relative:
        d = c - (1.0 + margin) * b if not higher_is_better else (1.0 - margin) * b - c
        p = bootstrap_p(d, 0.0, n_boot=n_boot, seed=seed)
        eff_margin = margin * abs(float(b.mean()))
    else:
        p = bootstrap_p(drop_i, margin, n_boot=n_boot, seed=seed)
        eff_margin = margin
    return TestResult("paired bootstrap (one-sided)", float(drop_i.mean()) if b.size else 0.0, eff_margin, p,
                      paired_ci(drop_i, n_boot=n_boot, seed=seed), int(b.size))


# -- unpaired fallbacks -----------------------------------------------------------------------

def farrington_manning_p(x_base: int, n_base: int, x_cand: int, n_cand: int, margin: float) -> float:
    """One-sided score test for two independent proportions, H0: p_base - p_cand <= margin."""
    if n_base == 0 or n_cand == 0:
        return 1.0
    p1, p2 = x_base / n_base, x_cand / n_cand
    d = margin
    if d == 0:
        pooled = (x_base + x_cand) / (n_base + n_cand)
        q1 = q2 = pooled
    else:
        # restricted MLE of (p1, p2) with p1 - p2 = d: root of a cubic (Farrington & Manning, 1990)
        theta = n_cand / n_base
        a = 1 + theta
        b = -(1 + theta + p1 + theta * p2 + d * (theta + 2))
        c = d * d + d * (2 * p1 + theta + 1) + p1 + theta * p2
        e = -p1 * d * (1 + d)
        v = b ** 3 / (27 * a ** 3) - b * c / (6 * a * a) + e / (2 * a)
        u = math.copysign(math.sqrt(max(b * b / (9 * a * a) - c / (3 * a), 0.0)), v)
        w = (math.pi + math.acos(max(-1.0, min(1.0, v / u ** 3)) if u != 0 else 0.0)) / 3
        q1 = 2 * u * math.cos(w) - b / (3 * a)
        q2 = q1 - d
    var = q1 * (1 - q1) / n_base + q2 * (1 - q2) / n_cand
    num = p1 - p2 - d
    if var <= 0:
        return 1.0 if num <= 0 else 0.0
    return normal_sf(num / math.sqrt(var))


def unpaired(baseline: np.ndarray, candidate: np.ndarray, *, binary: bool, higher_is_better: bool,
             margin: float, relative: bool, seed: int = 0) -> TestResult:
    """Gate test when baseline and candidate were evaluated on different samples."""
    b = np.asarray(baseline, np.float64).reshape(-1)
    c = np.asarray(candidate, np.float64).reshape(-1)
    sign = 1.0 if higher_is_better else -1.0
    drop = sign * (float(b.mean()) - float(c.mean()))
    rng = np.random.default_rng(seed)
    boots = sign * (_boot_means(b, 2000, rng) - _boot_means(c, 2000, rng))
    ci = tuple(float(v) for v in np.quantile(boots, [0.025, 0.975]))
    if binary and higher_is_better:
        p = farrington_manning_p(int(b.sum()), b.size, int(c.sum()), c.size, margin)
        return TestResult("Farrington-Manning score test, unpaired (one-sided)", drop, margin, p, ci,
                          int(min(b.size, c.size)), {"n_baseline": int(b.size), "n_candidate": int(c.size)})
    eff = margin * abs(float(b.mean())) if relative else margin
    se = math.sqrt(b.var(ddof=1) / b.size + c.var(ddof=1) / c.size) if min(b.size, c.size) > 1 else 0.0
    num = drop - eff
    p = normal_sf(num / se) if se > 0 else (1.0 if num <= 0 else 0.0)
    return TestResult("Welch z-test, unpaired (one-sided)", drop, eff, p, ci, int(min(b.size, c.size)),
                      {"n_baseline": int(b.size), "n_candidate": int(c.size)})


# -- latency ------------------------------------------------------------------------------------

def latency_sign_test(ratios: np.ndarray, max_ratio: float) -> TestResult:
    """H0: the median candidate/baseline latency ratio <= max_ratio, from per-round ratios of an
    interleaved measurement. One-sided sign test: rounds slower than allowed ~ Binomial(k, 1/2)."""
    r = np.asarray(ratios, np.float64).reshape(-1)
    above = int(np.sum(r > max_ratio))
    below = int(np.sum(r < max_ratio))
    p = binom_sf(above, above + below, 0.5) if above + below else 1.0
    lo, hi = _median_ci(r)
    return TestResult("sign test over interleaved rounds (one-sided)", float(np.median(r)) if r.size else float("nan"),
                      max_ratio, p, (lo, hi), int(r.size), {"rounds_above": above})


def _median_ci(r: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median: [X(j+1), X(n-j)] covers it with 1 - 2 P(Bin(n, 1/2) <= j)."""
    n = r.size
    if n == 0:
        return (float("nan"), float("nan"))
    s = np.sort(r)
    j = 0
    while j + 1 < n - 1 - j and 2 * (1 - binom_sf(j + 2, n, 0.5)) <= 1 - level:   # P(X <= j + 1)
        j += 1
    return (float(s[j]), float(s[n - 1 - j]))
