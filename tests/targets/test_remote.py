"""The device farm on loopback: a real TVM RPC tracker and a real board (this host, key "x86", served by
`edgecompile device serve`), reached by `bench|run --remote`, `device list` and tuning through the
tracker. The emulated arm64 board is tested in tests/test_emulated_board.py (slow)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import tvm  # noqa: E402,F401  (installed by the set-up: a missing one fails the run, naming it)

from edgecompile.targets.tvm import remote  # noqa: E402
from edgecompile.errors import ConfigError, RemoteError  # noqa: E402
from conftest import free_port, run_cli  # noqa: E402

KEY = "x86"


def _spawn(*args):
    log = tempfile.TemporaryFile(mode="w+")      # not a pipe: nobody drains it while the test runs
    proc = subprocess.Popen([sys.executable, "-m", "edgecompile", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=log, text=True, start_new_session=True)
    proc.log = log
    return proc


def _log(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()[-2000:]


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.fixture(scope="module")
def farm():
    """A tracker and one board registered with it; yields the tracker's address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    tracker = _spawn("device", "tracker", "--port", port)
    deadline = time.monotonic() + 60
    while True:
        try:
            remote.tracker_summary(address)
            break
        except RemoteError:
            if time.monotonic() > deadline or tracker.poll() is not None:
                _stop(tracker)
                pytest.fail(f"the tracker did not start: {_log(tracker)}")
            time.sleep(0.3)
    board_port = free_port()
    board = _spawn("device", "serve", "--tracker", address, "--key", KEY, "--port", board_port,
                   "--port-end", board_port + 50)
    try:
        try:
            remote.wait_for_board(address, KEY, timeout=60)
        except RemoteError:
            pytest.fail(f"the board did not register: {_log(board)}")
        yield address
    finally:
        _stop(board)
        _stop(tracker)


def test_device_list_shows_the_board(farm):
    code, out, err = run_cli("device", "list", "--tracker", farm)
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith(KEY))
    assert row[1:3] == ["1", "0"] and row[3].startswith("127.0.0.1:")
    code, out, _ = run_cli("device", "list", "--tracker", farm, "--json")
    assert json.loads(out)["boards"][0]["key"] == KEY


def test_remote_bench_reports_latency_and_accuracy_from_the_board(farm, tvm_bundle):
    code, out, err = run_cli("bench", tvm_bundle.path, "--remote", farm, "--key", KEY, "--runs", 15, "--accuracy",
                             "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["remote"] is True and res["key"] == KEY and res["emulated"] is False and res["tracker"] == farm
    assert res["runs"] == 15 and len(res["samples"]) == 15 and res["batch"] == 1
    assert 0 < res["min"] <= res["p50"] <= res["p90"] <= res["p99"]
    assert res["board"]["arch"] == "x86_64" and res["board"]["tvm_version"]
    acc = res["accuracy"]
    assert acc["metric"] == "top1" and acc["n"] == 360
    assert acc["value"] == tvm_bundle.report()["accuracy"]["candidate"]
    code, out, err = run_cli("bench", tvm_bundle.path, "--remote", farm, "--key", KEY, "--runs", 5)
    assert code == 0 and f"on board '{KEY}' via {farm}" in out and "p50" in out and "emulated" not in out, err


def test_remote_runner_gives_the_local_outputs(farm, tvm_bundle, digits_source):
    import edgecompile

    x = digits_source.dataset("test").inputs["input"][:40]
    with remote.load(tvm_bundle.path, farm, KEY) as board, edgecompile.runtime.load(tvm_bundle.path) as local:
        assert board.board["key"] == KEY and board.board["emulated"] is False
        np.testing.assert_allclose(board(x), local(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception, match="dtype"):
            board(x.astype(np.float64))           # inputs are validated before they travel


def test_ort_bundles_run_and_are_timed_on_the_board(farm, digits_bundle, digits_source):
    """Issue 27: `device serve` runs ONNX Runtime bundles too (the graph is uploaded, timed on the board)."""
    import edgecompile

    x = digits_source.dataset("test").inputs["input"][:40]
    with remote.load(digits_bundle.path, farm, KEY) as board, edgecompile.runtime.load(digits_bundle.path) as local:
        assert type(board).__name__ == "RemoteOrtRunner" and board.board["key"] == KEY
        np.testing.assert_allclose(board(x), local(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception, match="dtype"):
            board(x.astype(np.float64))
    code, out, err = run_cli("bench", digits_bundle.path, "--remote", farm, "--key", KEY, "--runs", 12,
                             "--accuracy", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["remote"] is True and res["key"] == KEY and res["board"]["arch"] == "x86_64"
    assert res["runs"] == 12 and len(res["samples"]) == 12 and 0 < res["min"] <= res["p50"] <= res["p99"]
    assert res["accuracy"]["value"] == digits_bundle.report()["accuracy"]["candidate"]


def test_auto_measures_the_candidates_on_the_board(farm, tmp_path):
    """Issue 27: --backend auto with --remote/--key scores and times each candidate on the board."""
    out_dir = tmp_path / "auto"
    code, out, err = run_cli("build", "models/digits", "--backend", "auto", "--remote", farm, "--key", KEY,
                             "-o", out_dir)
    assert code == 0, err[-3000:]
    choice = json.loads((out_dir / "manifest.json").read_text())["autochoice"]
    assert choice["measured_on"]["key"] == KEY and choice["measured_on"]["arch"] == "x86_64"
    rows = {(r["backend"], r["precision"]): r for r in choice["candidates"]}
    ort = rows[("ort", "fp32")]
    assert ort["runs"] >= 20 and ort["p50_ms"] > 0 and ort["accuracy_drop"] == 0
    if ("openvino", "fp32") in rows:      # the board runs TVM and ORT bundles only: said, not guessed
        assert rows[("openvino", "fp32")]["status"] == "failed"
        assert "openvino bundle" in rows[("openvino", "fp32")]["reason"]
    assert (choice["chosen"]["backend"], choice["chosen"]["precision"]) == ("ort", "fp32")


def test_auto_refuses_a_board_of_another_arch(farm, tmp_path):
    code, out, err = run_cli("build", "models/digits", "--target", "rpi5", "--backend", "auto", "--remote", farm,
                             "--key", KEY, "-o", tmp_path / "x")
    assert code == 1 and "Traceback" not in err
    assert f"board '{KEY}' is x86_64, but target rpi5 is aarch64" in err, err


def test_two_boards_on_distinct_ports_and_a_token_proves_the_board(digits_bundle, digits_source, monkeypatch):
    """Issue 27: two boards, each under its own key and port, on a tracker of their own (so the module's farm
    keeps its one board); `serve --token` lets clients check that the board is the expected one."""
    import edgecompile

    tport, ports = free_port(), [free_port(), free_port()]
    farm = f"127.0.0.1:{tport}"
    procs = [_spawn("device", "tracker", "--port", tport)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                remote.tracker_summary(farm)
                break
            except RemoteError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the tracker did not start: {_log(procs[0])}")
                time.sleep(0.3)
        for key, port, extra in (("plain", ports[0], ()), ("x86b", ports[1], ("--token", "s3cret"))):
            procs.append(_spawn("device", "serve", "--tracker", farm, "--key", key, "--port", port,
                                "--port-end", port, *extra))     # --port-end is the last port tried
        for key, proc in (("plain", procs[1]), ("x86b", procs[2])):
            try:
                remote.wait_for_board(farm, key, timeout=60)
            except RemoteError:
                pytest.fail(f"board {key} did not register: {_log(proc)}")
        rows = {r["key"]: r for r in remote.boards(remote.tracker_summary(farm))}
        assert rows["plain"]["servers"] == [f"127.0.0.1:{ports[0]}"]
        assert rows["x86b"]["servers"] == [f"127.0.0.1:{ports[1]}"]
        x = digits_source.dataset("test").inputs["input"][:8]
        monkeypatch.setenv(remote.ENV_TOKEN, "wrong")
        with pytest.raises(RemoteError, match="did not prove it is the expected board"):
            remote.load(digits_bundle.path, farm, "x86b")
        monkeypatch.setenv(remote.ENV_TOKEN, "s3cret")
        with pytest.raises(RemoteError, match="board 'plain' did not prove"):   # a board without the token
            remote.load(digits_bundle.path, farm, "plain")
        with remote.load(digits_bundle.path, farm, "x86b") as board:
            with edgecompile.runtime.load(digits_bundle.path) as here:
                np.testing.assert_allclose(board(x), here(x), rtol=1e-5, atol=1e-6)
        monkeypatch.delenv(remote.ENV_TOKEN)
        with remote.load(digits_bundle.path, farm, "plain") as board:      # no token asked: any board answers
            assert board.board["key"] == "plain"
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_remote_run_scores_the_labels(farm, tvm_bundle, digits_test_npz):
    code, out, err = run_cli("run", tvm_bundle.path, "-i", digits_test_npz, "--remote", farm, "--key", KEY)
    assert code == 0, err
    assert f"ran on board '{KEY}'" in out and "top-1 accuracy vs labels: 100.00 %" in out


def test_tuning_measures_kernels_on_the_board(farm, digits_bundle, tmp_path):
    import onnx_ir as ir

    from edgecompile.targets.profiles import get_profile
    from edgecompile.targets.tvm.build import compile_library

    model = ir.load(str(digits_bundle.path / "model.onnx"))
    meta = compile_library(model, get_profile("cpu"), tmp_path / "m.so", tune_trials=2, cache=False,
                           remote={"tracker": farm, "key": KEY})
    tuning = meta["tuning"]
    assert tuning["trials_run_now"] > 0, tuning
    assert tuning["measured_on"] == {"tracker": farm, "key": KEY, "arch": "x86_64", "emulated": False}


@pytest.mark.parametrize("args, code, needle", [
    (["--remote", "8.8.8.8:9190", "--key", KEY], 2, "is not a loopback address"),
    (["--remote", "127.0.0.1", "--key", KEY], 2, "bad tracker address"),
    (["--key", KEY], 2, "--remote and --key go together"),
])
def test_bad_remote_arguments_are_one_line_errors(tvm_bundle, args, code, needle):
    rc, out, err = run_cli("bench", tvm_bundle.path, *args)
    assert rc == code and needle in err and "Traceback" not in err, err


def test_unknown_board_and_missing_tracker_name_the_fix(farm, tvm_bundle, digits_bundle, tmp_path):
    rc, _, err = run_cli("bench", tvm_bundle.path, "--remote", farm, "--key", "nope", "--wait", 0.5)
    assert rc == 1 and "no board with key 'nope'" in err and f"(boards: {KEY})" in err and "device serve" in err
    rc, _, err = run_cli("bench", tvm_bundle.path, "--remote", f"127.0.0.1:{free_port()}", "--key", KEY)
    assert rc == 1 and "no RPC tracker at" in err and "device tracker" in err and "Traceback" not in err
    other = tmp_path / "ov"              # a backend a board cannot run (the manifest says openvino)
    shutil.copytree(digits_bundle.path, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "backend": "openvino"}))
    rc, _, err = run_cli("bench", other, "--remote", farm, "--key", KEY)
    assert rc == 2 and "is a openvino bundle" in err and "Traceback" not in err, err


def test_parse_address_accepts_only_loopback():
    assert remote.parse_address("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert remote.parse_address("localhost:1") == ("localhost", 1)
    for bad in ("10.0.0.1:9190", "127.0.0.1:0", "127.0.0.1:x", ":9190"):
        with pytest.raises(ConfigError):
            remote.parse_address(bad)
