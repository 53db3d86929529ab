"""The emulated arm64 board (scripts/emulated_board.sh: Debian arm64 under qemu-user + proot, the slim
runtime inside, an RPC server registered with a local tracker). Slow: preparing the root filesystem
takes 10-20 minutes the first time (then it is cached); run with `.venv/bin/python -m pytest -m slow
tests/test_emulated_board.py`. Needs debootstrap, qemu-user-static and proot (the script installs
them with apt-get when run as root) and the aarch64 cross-compiler."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, free_port, run_cli

pytestmark = pytest.mark.slow
import tvm  # noqa: E402,F401  (installed by the set-up: a missing one fails the run, naming it)

SCRIPT = REPO / "scripts" / "emulated_board.sh"
KEY = "rpi5"


def _script(*args, timeout=3600, env=None):
    proc = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOST_PY": sys.executable,
                               "EC": str(Path(sys.executable).parent / "edgecompile"), **(env or {})})
    return proc


@pytest.fixture(scope="module")
def board():
    """The emulated board, registered under KEY with a tracker on a free loopback port."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc missing (bash scripts/bootstrap.sh installs it as root)")
    # the rootfs is cached in the user's cache (not the tests' temporary one): 10-20 min to prepare
    env = {"BOARD_DIR": os.environ.get("BOARD_DIR") or str(Path.home() / ".cache/edgecompile/board/arm64-bookworm")}
    prep = _script("prepare", env=env)
    assert prep.returncode == 0, prep.stderr[-3000:]
    tracker = f"127.0.0.1:{free_port()}"
    start = _script("start", "--key", KEY, "--tracker", tracker, "--port", free_port(), env=env, timeout=600)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        yield tracker, env
    finally:
        _script("stop", env=env, timeout=120)


@pytest.fixture(scope="module")
def rpi5_bundle(tmp_path_factory):
    import edgecompile

    # /tmp is shared with the board (proot binds it), so the board can load the bundle directly
    return edgecompile.build("models/digits", target="rpi5", output=tmp_path_factory.mktemp("board") / "digits-rpi5")


def test_remote_bench_on_the_emulated_board(board, rpi5_bundle, digits_bundle):
    tracker, _ = board
    code, out, err = run_cli("bench", rpi5_bundle.path, "--remote", tracker, "--key", KEY, "--runs", 20,
                             "--accuracy", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["remote"] is True and res["emulated"] is True and res["board"]["arch"] == "aarch64"
    assert res["runs"] == 20 and 0 < res["p50"] <= res["p99"]
    assert res["accuracy"]["value"] == digits_bundle.report()["accuracy"]["candidate"]   # top-1 identical
    code, out, err = run_cli("bench", rpi5_bundle.path, "--remote", tracker, "--key", KEY, "--runs", 10)
    assert code == 0 and "emulated board 'rpi5'" in out and "(emulated: not a real board's speed)" in out, err
    print(out)


def test_board_outputs_match_the_ort_bundle(board, rpi5_bundle, digits_bundle, digits_source):
    import edgecompile
    from edgecompile.targets.tvm import remote

    tracker, _ = board
    x = digits_source.dataset("test").inputs["input"]
    with remote.load(rpi5_bundle.path, tracker, KEY) as on_board, edgecompile.runtime.load(digits_bundle.path) as ort:
        got, want = on_board(x), ort(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_slim_runtime_runs_the_bundles_inside_the_board_without_torch(board, rpi5_bundle, digits_bundle,
                                                                      digits_test_npz):
    _, env = board
    code = (
        "import importlib.util, platform, sys, numpy as np\n"
        "from edgecompile.runtime import load\n"
        f"d = np.load({str(digits_test_npz)!r})\n"
        "res = {}\n"
        f"for path in ({str(rpi5_bundle.path)!r}, {str(digits_bundle.path)!r}):\n"
        "    with load(path) as r:\n"
        "        res[r.bundle.backend] = float((r(d['input']).argmax(1) == d['labels']).mean())\n"
        "print(platform.machine(), importlib.util.find_spec('torch') is None, 'torch' in sys.modules, res)\n"
    )
    proc = _script("exec", "/opt/board/bin/python", "-c", code, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    print(line)
    want = digits_bundle.report()["accuracy"]["candidate"]
    assert line.startswith("aarch64 True False ") and f"'tvm': {want}" in line and f"'ort': {want}" in line


def test_tuning_through_the_emulated_board(board, tmp_path):
    tracker, _ = board
    code, out, err = run_cli("build", "models/digits", "--target", KEY, "--tune", 2, "--remote", tracker,
                             "--key", KEY, "--no-cache", "-o", tmp_path / "tuned", "--json", timeout=3000)
    assert code == 0, err[-3000:]
    tuning = json.loads((tmp_path / "tuned" / "manifest.json").read_text())["backend_options"]["tuning"]
    assert tuning["trials_in_database"] > 0 and tuning["measured_on"]["emulated"] is True


@pytest.fixture(scope="module")
def rpi5_ort_bundles(tmp_path_factory):
    """The digits ORT bundles for rpi5 (fp32 and QDQ int8): plain ONNX graphs built on this x86 host."""
    import edgecompile

    root = tmp_path_factory.mktemp("board-ort")     # under /tmp, which the board sees
    return {p: edgecompile.build("models/digits", target="rpi5", backend="ort", precision=p, output=root / p)
            for p in ("fp32", "int8")}


def test_ort_rpi5_bundles_on_the_board_match_the_x86_run(board, rpi5_ort_bundles, digits_test_npz, tmp_path):
    """Issue 27: the same ORT bundle under the slim runtime on aarch64 gives the x86 run's outputs."""
    import edgecompile

    _, env = board
    code = (
        "import platform, numpy as np\n"
        "from edgecompile.runtime import load\n"
        f"x = np.load({str(digits_test_npz)!r})['input']\n"
        "out = {}\n"
        f"for p, path in {({p: str(b.path) for p, b in rpi5_ort_bundles.items()})!r}.items():\n"
        "    with load(path) as r:\n"
        "        out[p] = r(x)\n"
        f"np.savez({str(tmp_path / 'board.npz')!r}, **out)\n"
        "print(platform.machine())\n"
    )
    proc = _script("exec", "/opt/board/bin/python", "-c", code, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "aarch64"
    on_board = np.load(tmp_path / "board.npz")
    x = np.load(digits_test_npz)["input"]
    for p, bundle in rpi5_ort_bundles.items():
        with edgecompile.runtime.load(bundle.path) as here:
            want = here(x)
        # fp32: kernels differ (NEON vs AVX) only in rounding; int8: a requantization step may round apart
        tol = 1e-4 if p == "fp32" else 0.05 * float(np.abs(want).max())
        np.testing.assert_allclose(on_board[p], want, rtol=1e-4, atol=tol, err_msg=p)
        assert (on_board[p].argmax(1) == want.argmax(1)).mean() >= (1.0 if p == "fp32" else 0.99), p
