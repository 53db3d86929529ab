"""pytest plugin (entry point `pytest11`): accuracy regression tests for EdgeCompile bundles.

    # test_model.py
    from edgecompile.verify.pytest_plugin import assert_no_regression

    def test_no_regression(edgecompile_bundle, edgecompile_baseline):
        assert_no_regression(edgecompile_bundle, edgecompile_baseline, max_drop=1.0)

Run with `pytest --edgecompile-bundle build/digits-cpu --edgecompile-baseline baseline.json`
(or the ini keys `edgecompile_bundle` / `edgecompile_baseline`). Tests that use the fixtures
are skipped, with the reason, when the bundle or baseline is not configured. `edgecompile_load`
is a factory for any other bundle: `edgecompile_load(path)` -> LoadedBundle (.bundle, .runner, .data).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class LoadedBundle:
    """A verified bundle, a Runner for it (closed at teardown) and its evaluation data, loaded on
    first use: the `.npz` given, else the configured baseline's data, else the data the bundle
    records in its manifest."""

    path: Path
    bundle: object          # edgecompile.runtime.bundle.Bundle
    runner: object          # edgecompile.runtime.Runner
    data_file: Path | None = None
    baseline: Path | None = None
    _data: object = None

    @property
    def data(self):
        """edgecompile.data.Dataset"""
        if self._data is None:
            from edgecompile.verify.gate_data import bundle_dataset
            from edgecompile.verify.regression import dataset_for

            if self.data_file is None and self.baseline is not None:
                self._data = dataset_for(self.baseline, self.path)
            else:
                self._data = bundle_dataset(self.bundle, self.data_file)
        return self._data

    def outputs(self):
        from edgecompile.verify.regression import outputs_of

        return outputs_of(self.runner, self.data)


class RegressionError(AssertionError):
    """Raised by assert_no_regression; its message is the verdict table."""


def assert_no_regression(bundle, baseline, *, max_drop: float | None = None, max_latency_ratio: float | None = None,
                         data=None, alpha: float = 0.05):
    """Fail (AssertionError) when `check` shows a regression of `bundle` against `baseline`.

    `bundle`: a directory, a Bundle or a LoadedBundle; `baseline`: a baseline file or its dict.
    Returns the CheckResult when it passes."""
    __tracebackhide__ = True
    from edgecompile.verify.regression import DEFAULT_MAX_DROP, check
    from edgecompile.verify.verdict import render_table

    path = getattr(bundle, "path", bundle)
    if data is None:
        data = getattr(bundle, "data_file", None)
    res = check(path, baseline, max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop,
                max_latency_ratio=max_latency_ratio, data=data, alpha=alpha)
    if not res.ok:
        raise RegressionError(f"bundle {path} regressed against its baseline:\n"
                              + "\n".join(f"  {f}" for f in res.failures) + "\n\n" + render_table(res))
    return res


def pytest_addoption(parser):
    group = parser.getgroup("edgecompile", "EdgeCompile accuracy regression tests")
    group.addoption("--edgecompile-bundle", metavar="DIR", help="bundle under test (fixture edgecompile_bundle)")
    group.addoption("--edgecompile-baseline", metavar="FILE", help="baseline JSON (fixture edgecompile_baseline)")
    group.addoption("--edgecompile-data", metavar="FILE", help=".npz evaluation data overriding the bundle's")
    parser.addini("edgecompile_bundle", "bundle under test (relative to the rootdir)", default="")
    parser.addini("edgecompile_baseline", "baseline JSON (relative to the rootdir)", default="")


def _setting(config, name: str) -> Path | None:
    value = config.getoption(f"--edgecompile-{name}")
    if value:
        return Path(value)
    ini = config.getini(f"edgecompile_{name}") if name != "data" else ""
    return (Path(config.rootpath) / ini) if ini else None


@pytest.fixture
def edgecompile_load():
    """Factory: `edgecompile_load(path, data=None, baseline=None)` -> LoadedBundle; runners close at teardown."""
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.runtime import load

    opened = []

    def _load(path, data=None, baseline=None) -> LoadedBundle:
        bundle = Bundle.open(path)
        runner = load(bundle.path)
        opened.append(runner)
        return LoadedBundle(bundle.path, bundle, runner, Path(data) if data is not None else None,
                            Path(baseline) if baseline is not None else None)

    yield _load
    for r in opened:
        r.close()


@pytest.fixture
def edgecompile_bundle(request, edgecompile_load) -> LoadedBundle:
    """The bundle named by --edgecompile-bundle / ini edgecompile_bundle, loaded with its eval data."""
    path = _setting(request.config, "bundle")
    if path is None:
        pytest.skip("no bundle configured: pass --edgecompile-bundle DIR or set edgecompile_bundle in the ini file")
    return edgecompile_load(path, _setting(request.config, "data"), _setting(request.config, "baseline"))


@pytest.fixture
def edgecompile_baseline(request) -> dict:
    """The baseline named by --edgecompile-baseline / ini edgecompile_baseline, validated."""
    from edgecompile.verify.regression import load_baseline

    path = _setting(request.config, "baseline")
    if path is None:
        pytest.skip("no baseline configured: pass --edgecompile-baseline FILE or set edgecompile_baseline in the ini "
                    "file (record one with `edgecompile baseline DIR -o FILE`)")
    return load_baseline(path)
