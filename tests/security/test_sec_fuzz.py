"""A 20-second atheris run of each fuzz harness (bench/fuzz.py): no exception other than the project's errors,
no hang (libFuzzer -timeout=10). The long runs (>= 100,000 executions) are `python bench/fuzz.py all --runs N`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", ["bundle", "onnx"])
def test_fuzz_harness_20_seconds(target):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), target, "--seconds", "20"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = [ln for ln in proc.stderr.splitlines() if ln.startswith("stat::number_of_executed_units")]
    assert executed and int(executed[-1].split(":")[-1]) > 100, proc.stderr[-2000:]
