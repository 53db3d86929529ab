"""The no-silent-skips policy (tests/skip_policy.py): a real pytest run over tiny test files, in a
subprocess, with only that plugin loaded."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from skip_policy import ALLOWED, is_allowed

TESTS = Path(__file__).resolve().parent


def run_pytest(tmp_path, source: str):
    (tmp_path / "test_tiny.py").write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider",
                           "-q", "test_tiny.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_allowed_skips_pass_and_are_listed_with_counts(tmp_path):
    rc, out = run_pytest(tmp_path, """
        import pytest

        def test_ok():
            pass

        @pytest.mark.parametrize("i", range(2))
        def test_gpu(i):
            pytest.skip("needs TensorRT and an NVIDIA GPU: no CUDA here")

        @pytest.mark.skipif(True, reason="needs an aarch64 host (this is x86_64)")
        def test_arm():
            pass
    """)
    assert rc == 0, out
    assert "skip reasons" in out
    assert re.search(r"^\s+2\s+allowed\s+needs TensorRT and an NVIDIA GPU: no CUDA here$", out, re.M), out
    assert re.search(r"^\s+1\s+allowed\s+needs an aarch64 host \(this is x86_64\)$", out, re.M), out
    assert "NOT ALLOWED" not in out


def test_a_skip_not_on_the_allow_list_fails_the_run(tmp_path):
    rc, out = run_pytest(tmp_path, """
        import pytest

        def test_ok():
            pass

        def test_missing_tool():
            pytest.skip("chromium is not installed")

        def test_gpu():
            pytest.skip("needs TensorRT and an NVIDIA GPU: no CUDA here")
    """)
    assert rc == 1, out
    assert re.search(r"^\s+1\s+NOT ALLOWED\s+chromium is not installed$", out, re.M), out
    assert re.search(r"^\s+1\s+allowed\s+needs TensorRT", out, re.M), out
    assert "1 test(s) skipped for reasons not on the allow-list" in out


def test_a_module_skipped_at_collection_fails_the_run(tmp_path):
    """importorskip of a package that is not installed: the whole module used to vanish quietly."""
    rc, out = run_pytest(tmp_path, """
        import pytest

        pytest.importorskip("edgecompile_no_such_package")

        def test_never_runs():
            pass
    """)
    assert rc == 1, out
    assert re.search(r"NOT ALLOWED\s+could not import 'edgecompile_no_such_package'", out), out


def test_failures_keep_their_exit_code_and_no_skips_prints_nothing(tmp_path):
    rc, out = run_pytest(tmp_path, """
        def test_fails():
            assert False
    """)
    assert rc == 1 and "1 failed" in out and "skip reasons" not in out, out


def test_the_repositorys_own_skip_reasons_are_classified():
    assert is_allowed("needs TensorRT and an NVIDIA GPU: the tensorrt Python package is not installed")
    assert is_allowed("needs a host without TensorRT (TensorRT is available here)")
    assert is_allowed("needs an aarch64 host without TensorRT (the AArch64 fallback; this is x86_64, TensorRT absent)")
    assert is_allowed("this CPU lacks BF16 (OpenVINO reports no BF16 capability)")
    # what the set-up installs is never an excuse
    assert not is_allowed("aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu)")
    assert not is_allowed("chromium is not installed (bash scripts/bootstrap.sh installs it as root)")
    assert not is_allowed("could not import 'openvino': No module named 'openvino'")


@pytest.mark.parametrize("pattern,why", ALLOWED)
def test_the_allow_list_is_documented_in_the_readme(pattern, why):
    readme = (TESTS.parent / "README.md").read_text()
    section = readme.split("### Skipped tests", 1)[1].split("\n#", 1)[0]
    words = pattern.lstrip("^").removesuffix(r"\b")
    assert words in section, f"README 'Skipped tests' does not list {words!r}"
