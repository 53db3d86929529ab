"""No silent skips: every run ends with the skip reasons and their counts, and fails (exit 1) when a
test was skipped for a reason that is not on ALLOWED below. A skip is how a broken install or a
missing system package used to turn into a green run; everything the set-up installs must run.

Loaded by tests/conftest.py (its hooks are imported there); also usable alone with `-p skip_policy`
when tests/ is on sys.path. Keep ALLOWED short and in sync with the README ("Skipped tests").
"""
from __future__ import annotations

import re
from collections import Counter

import pytest

# (pattern searched in the skip reason, why a machine the set-up ran on may still lack it)
ALLOWED: list[tuple[str, str]] = [
    (r"^needs TensorRT and an NVIDIA GPU\b", "TensorRT has no usable PyPI wheel and needs a CUDA GPU (a Jetson)"),
    (r"^needs an aarch64 host\b", "runs code only an ARM64 CPU can execute"),
    (r"^needs a host without TensorRT\b", "tests the no-TensorRT path; skipped on a Jetson"),
    (r"^this CPU lacks\b", "a CPU feature (e.g. BF16) this machine's processor does not have"),
]

_SKIPS = pytest.StashKey[Counter]()


def skip_reason(report) -> str | None:
    """The reason of a skipped test/collection report (None for other outcomes and xfails)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def is_allowed(reason: str) -> bool:
    return any(re.search(pattern, reason) for pattern, _ in ALLOWED)


class SkipPolicy:
    """Counts skip reasons over one session; fails the session on reasons not allowed."""

    def __init__(self):
        self.skips: Counter = Counter()

    def _record(self, report) -> None:
        reason = skip_reason(report)
        if reason is not None:
            self.skips[reason] += 1

    def pytest_runtest_logreport(self, report):
        self._record(report)

    def pytest_collectreport(self, report):
        self._record(report)

    def disallowed(self) -> Counter:
        return Counter({r: n for r, n in self.skips.items() if not is_allowed(r)})

    def pytest_sessionfinish(self, session):
        # NO_TESTS_COLLECTED too: a module skipped whole at collection leaves nothing collected
        if self.disallowed() and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.skips:
            return
        tr, bad = terminalreporter, self.disallowed()
        tr.section("skip reasons")
        for reason, n in self.skips.most_common():
            tr.line(f"{n:4d}  {'NOT ALLOWED' if reason in bad else 'allowed    '}  {reason}", red=reason in bad)
        if bad:
            tr.line(f"error: {sum(bad.values())} test(s) skipped for reasons not on the allow-list "
                    "(tests/skip_policy.py, README 'Skipped tests'), so the run fails. A missing package or "
                    "system piece: run `bash scripts/bootstrap.sh`; `edgecompile doctor` says what is missing.",
                    red=True, bold=True)


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("edgecompile-skip-policy"):
        config.pluginmanager.register(SkipPolicy(), "edgecompile-skip-policy")
