"""The latency half of `check`: candidate vs baseline p50 measured side by side (interleaved rounds) with a
paired test on the per-round ratios, or against the baseline's recorded p50 when the baseline bundle is gone."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgecompile.errors import BundleError
from edgecompile.runtime.bundle import Bundle
from edgecompile.verify import gate


def _latency(runner, feeds, min_seconds: float = 0.5) -> dict:
    from edgecompile.verify.bench import latency

    lat = latency(runner, feeds, warmup=5, min_runs=30, min_seconds=min_seconds)
    lat.pop("samples", None)
    return lat


def interleaved_ratios(base_runner, cand_runner, feeds, *, rounds: int = 15, runs: int = 20,
                       warmup: int = 10) -> tuple[np.ndarray, float, float]:
    """Per-round candidate/baseline median latency ratios, rounds alternating which runs first
    (A B, B A, ...) so that drift and noise hit both. Returns (ratios, baseline p50, candidate p50) in ms."""
    for _ in range(warmup):
        base_runner.run(feeds)
        cand_runner.run(feeds)

    def block(r) -> np.ndarray:
        t = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter()
            r.run(feeds)
            t[i] = time.perf_counter() - t0
        return t

    ratios, all_a, all_b = [], [], []
    for k in range(rounds):
        if k % 2 == 0:
            a = block(base_runner)
            b = block(cand_runner)
        else:
            b = block(cand_runner)
            a = block(base_runner)
        ratios.append(float(np.median(b) / np.median(a)))
        all_a.append(a)
        all_b.append(b)
    return (np.asarray(ratios), float(np.median(np.concatenate(all_a)) * 1e3),
            float(np.median(np.concatenate(all_b)) * 1e3))


def _check_latency(base: dict, bundle: Bundle, runner, feeds, max_ratio, threads, rounds, alpha) -> dict | None:
    if max_ratio is None:
        return None
    from edgecompile.runtime import load

    base_path = base["bundle"].get("path")
    base_bundle = None
    if base_path and Path(base_path).is_dir():
        try:
            base_bundle = Bundle.open(base_path)
        except BundleError:
            base_bundle = None
    if base_bundle is not None and base_bundle.bundle_id == base["bundle"].get("bundle_id"):
        with load(base_bundle.path, threads=threads) as base_runner:
            ratios, p50_a, p50_b = interleaved_ratios(base_runner, runner, feeds, rounds=rounds)
        test = gate.latency_sign_test(ratios, max_ratio)
        failed = test.rejects(alpha)
        res = {"gated": True, "mode": "side by side (interleaved)", "max_ratio": max_ratio, "ratio": test.drop,
               "ci95": list(test.ci), "p_value": test.p_value, "test": test.method, "rounds": int(test.n),
               "baseline_p50_ms": p50_a, "candidate_p50_ms": p50_b, "failed": failed}
    else:
        recorded = (base.get("latency_ms") or {}).get("p50")
        if not recorded:
            return {"gated": False, "mode": "unavailable", "max_ratio": max_ratio, "failed": False,
                    "reason": "the baseline's bundle is gone and the baseline recorded no latency"}
        cand = _latency(runner, feeds)
        ratio = cand["p50"] / recorded
        failed = ratio > max_ratio
        res = {"gated": True, "mode": "against the recorded baseline p50 (baseline bundle no longer available; "
                                      "not side by side, noisier)",
               "max_ratio": max_ratio, "ratio": ratio, "ci95": None, "p_value": None, "test": "point estimate",
               "baseline_p50_ms": recorded, "candidate_p50_ms": cand["p50"], "failed": failed}
    if res["failed"]:
        res["reason"] = (f"latency regression: p50 {res['baseline_p50_ms']:.3f} -> {res['candidate_p50_ms']:.3f} ms, "
                         f"ratio {res['ratio']:.2f} > allowed {max_ratio:g}"
                         + (f": p = {res['p_value']:.2g} < {alpha:g} ({res['test']})" if res["p_value"] is not None
                            else f" ({res['mode']})"))
    return res


