"""The pytest plugin, run for real with pytester: an inner test suite against a good and a regressed bundle."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = '''
from edgecompile.verify.pytest_plugin import assert_no_regression


def test_bundle_runs_on_its_data(edgecompile_bundle):
    out = edgecompile_bundle.outputs()
    assert out.shape == (len(edgecompile_bundle.data), 10)


def test_no_regression(edgecompile_bundle, edgecompile_baseline):
    assert_no_regression(edgecompile_bundle, edgecompile_baseline, max_drop=1.0)
'''


@pytest.fixture
def inner(pytester):
    pytester.makepyfile(test_model=INNER)
    return pytester


def test_plugin_is_registered_by_entry_point(inner):
    res = inner.runpytest("--help")
    res.stdout.fnmatch_lines(["*--edgecompile-bundle=DIR*", "*--edgecompile-baseline=FILE*"])


def test_plugin_passes_on_the_good_bundle(inner, digits_bundle, digits_baseline):
    res = inner.runpytest("--edgecompile-bundle", str(digits_bundle.path), "--edgecompile-baseline",
                          str(digits_baseline[1]))
    res.assert_outcomes(passed=2)


def test_plugin_fails_on_the_regressed_bundle_with_a_readable_message(inner, regressed_bundle, digits_baseline):
    res = inner.runpytest("--edgecompile-bundle", str(regressed_bundle.path), "--edgecompile-baseline",
                          str(digits_baseline[1]))
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines([
        "*RegressionError: bundle * regressed against its baseline:",
        "*accuracy regression: top1 dropped by * pt (*.* % -> *.* %), more than the allowed 1 pt: p = *",
        "*top1 * FAIL*",
    ])
    assert "Traceback" not in res.stdout.str() and "site-packages" not in res.stdout.str()


def test_plugin_skips_with_a_reason_when_not_configured(inner):
    res = inner.runpytest("-rs")
    res.assert_outcomes(skipped=2)
    res.stdout.fnmatch_lines(["*no bundle configured: pass --edgecompile-bundle DIR*"])


def test_load_factory_and_explicit_data(inner, regressed_bundle, digits_test_npz):
    inner.makepyfile(test_factory=f'''
import pytest
from edgecompile.errors import DataError

def test_factory(edgecompile_load):
    b = edgecompile_load({str(regressed_bundle.path)!r})
    with pytest.raises(DataError, match="not kept in the bundle"):
        b.data
    b = edgecompile_load({str(regressed_bundle.path)!r}, data={str(digits_test_npz)!r})
    assert len(b.data) == 360 and b.outputs().shape == (360, 10)
''')
    inner.runpytest("test_factory.py").assert_outcomes(passed=1)


def test_plugin_reads_ini_settings(inner, digits_bundle, digits_baseline):
    inner.makeini(f"[pytest]\nedgecompile_bundle = {digits_bundle.path}\nedgecompile_baseline = {digits_baseline[1]}\n")
    inner.runpytest().assert_outcomes(passed=2)
