"""Example accuracy regression test using the EdgeCompile pytest plugin (installed with edgecompile).

    edgecompile build models/digits --target cpu -o build/digits-cpu
    edgecompile baseline build/digits-cpu -o ci/baseline.json          # once, from the released bundle
    pytest docs/examples/test_model_regression.py \
        --edgecompile-bundle build/digits-cpu --edgecompile-baseline ci/baseline.json

Without the options (or the ini keys `edgecompile_bundle` / `edgecompile_baseline`) the tests are
skipped with the reason. A regression fails with the verdict table (metric, delta, CI, p-value).
"""
import numpy as np

from edgecompile.verify.pytest_plugin import assert_no_regression


def test_outputs_are_finite(edgecompile_bundle):
    out = edgecompile_bundle.outputs()            # first output on the bundle's evaluation data
    assert np.isfinite(out).all()


def test_no_accuracy_regression(edgecompile_bundle, edgecompile_baseline):
    # fails only when a one-sided paired test shows a drop of more than 1 pt (alpha = 0.05)
    assert_no_regression(edgecompile_bundle, edgecompile_baseline, max_drop=1.0)


def test_no_latency_regression(edgecompile_bundle, edgecompile_baseline):
    # measured side by side against the baseline's bundle when it still exists
    assert_no_regression(edgecompile_bundle, edgecompile_baseline, max_drop=100.0, max_latency_ratio=1.25)
