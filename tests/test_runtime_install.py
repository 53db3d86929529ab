"""`pip install edgecompile[runtime]` alone (no torch, no onnx, no compiler) runs a cpu bundle."""
from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_runtime_extra_runs_a_cpu_bundle_in_a_fresh_venv(digits_bundle, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    src = tmp_path / "src"            # a clean copy: the build must not see the developer's .venv or caches
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "bench", "tests"))
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "-c", str(REPO / "scripts" / "constraints.txt"), f"{src}[runtime]"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "onnxruntime" in names
    assert not names & {"torch", "onnx", "onnx-ir", "onnxscript", "apache-tvm", "openvino", "scikit-learn"}
    code = (
        "import sys, numpy as np\n"
        "from edgecompile.runtime import load\n"
        f"with load({str(digits_bundle.path)!r}) as r:\n"
        "    y = r(np.zeros((3, 1, 8, 8), np.float32))\n"
        "assert y.shape == (3, 10), y.shape\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'click')))\n"
    )
    run = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
