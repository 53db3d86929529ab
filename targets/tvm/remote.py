"""Boards behind TVM's RPC tracker: run and time a bundle's TVM library (or ORT graph) on a board, serve a board,
list a tracker's boards, start a tracker.

Only loopback addresses are accepted (EdgeCompile never opens or dials other network endpoints;
a remote board is reached through an SSH tunnel to a local port). TVM's RPC server executes
whatever it is sent: run it only for trusted users.

    tracker:   edgecompile device tracker --port 9190
    board:     edgecompile device serve --tracker 127.0.0.1:9190 --key rpi5
    host:      edgecompile bench OUT --remote 127.0.0.1:9190 --key rpi5
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

from edgecompile.errors import ConfigError, RemoteError, first_line

BOARD_INFO_FUNC = "edgecompile.board_info"
ENV_EMULATED = "EDGECOMPILE_BOARD_EMULATED"     # set by scripts/emulated_board.sh (and `serve --emulated`)
ENV_KEY = "EDGECOMPILE_BOARD_KEY"
ENV_TOKEN = "EDGECOMPILE_BOARD_TOKEN"        # shared secret: `device serve --token` and the clients' environment
PROOF_FUNC = "edgecompile.board_proof"
DEFAULT_TRACKER_PORT = 9190


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" -> (host, port); only loopback hosts are accepted."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bad tracker address {text!r}", hint="use HOST:PORT, e.g. 127.0.0.1:9190")
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r} ({exc.strerror})", hint="use 127.0.0.1") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise ConfigError(f"{host!r} is not a loopback address",
                          hint="EdgeCompile only talks to trackers on this machine: forward the board's "
                               "tracker to a local port (e.g. ssh -L 9190:localhost:9190 board) and use "
                               "127.0.0.1:9190")
    return host, int(port)


def _rpc():
    from edgecompile.targets.tvm.run import tvm_module

    try:
        tvm_module()
        from tvm import rpc
    except ImportError:
        raise RemoteError("TVM is not installed", hint="pip install 'edgecompile[runtime-tvm]'") from None
    return rpc


def connect_tracker(address: str):
    host, port = parse_address(address)
    rpc = _rpc()
    try:   # TVM retries a refused connection for 60 s: probe first, so a missing tracker fails at once
        socket.create_connection((host, port), timeout=5).close()
        return rpc.connect_tracker(host, port)
    except Exception as exc:   # TVM raises plain RuntimeError/ConnectionError with long texts
        raise RemoteError(f"no RPC tracker at {host}:{port} ({first_line(exc)})",
                          hint=f"start one: edgecompile device tracker --port {port}") from None


def tracker_summary(address: str, tracker=None) -> dict:
    """The tracker's summary: {"queue_info": {key: {"free": n, "pending": m}}, "server_info": [...]}."""
    tracker = tracker or connect_tracker(address)
    try:
        return tracker.summary()
    except Exception as exc:
        raise RemoteError(f"the tracker at {address} did not answer ({first_line(exc)})") from None


def boards(summary: dict) -> list[dict]:
    """One row per key: key, free, pending and the registered servers' addresses."""
    rows = {}
    for key, q in (summary.get("queue_info") or {}).items():
        rows[key] = {"key": key, "free": int(q.get("free", 0)), "pending": int(q.get("pending", 0)), "servers": []}
    for srv in summary.get("server_info") or []:
        key = str(srv.get("key", "")).split(":", 1)[-1]
        addr = srv.get("addr") or ["?", "?"]
        rows.setdefault(key, {"key": key, "free": 0, "pending": 0, "servers": []})["servers"].append(
            f"{addr[0]}:{addr[1]}")
    return [rows[k] for k in sorted(rows)]


def wait_for_board(address: str, key: str, timeout: float = 30.0, tracker=None):
    """Poll the tracker until a board with `key` is registered (a board that just started needs a
    moment to register). Returns the tracker session; RemoteError naming the known keys on timeout."""
    tracker = tracker or connect_tracker(address)
    deadline = time.monotonic() + timeout
    while True:
        summary = tracker_summary(address, tracker)
        if key in (summary.get("queue_info") or {}):
            return tracker
        if time.monotonic() >= deadline:
            known = ", ".join(r["key"] for r in boards(summary)) or "none"
            raise RemoteError(f"no board with key {key!r} on the tracker at {address} after {timeout:.0f} s "
                              f"(boards: {known})",
                              hint=f"start one: edgecompile device serve --tracker {address} --key {key}")
        time.sleep(0.5)


def request_board(address: str, key: str, *, wait: float = 30.0, session_timeout: float = 0):
    """An RPC session on a board with `key` (waits up to `wait` s for it to register)."""
    tracker = wait_for_board(address, key, wait)
    try:
        sess = tracker.request(key, priority=1, session_timeout=session_timeout)
    except Exception as exc:
        raise RemoteError(f"board {key!r} did not answer ({first_line(exc)})",
                          hint="is the board busy or gone? see `edgecompile device list`") from None
    token = os.environ.get(ENV_TOKEN)
    if token:
        check_proof(sess, key, token)
    return sess


def _proof(token: str, key: str, nonce: str) -> str:
    import hashlib
    import hmac

    return hmac.new(token.encode(), f"{key}:{nonce}".encode(), hashlib.sha256).hexdigest()


def check_proof(sess, key: str, token: str) -> None:
    """The board must answer a fresh nonce with HMAC(token, key:nonce): anyone on the host can register a key
    with the tracker, only the expected board knows the token."""
    import hmac
    import secrets

    nonce = secrets.token_hex(16)
    try:
        answer = str(sess.get_function(PROOF_FUNC)(nonce))
    except Exception:
        answer = ""
    if not hmac.compare_digest(answer, _proof(token, key, nonce)):
        raise RemoteError(f"board {key!r} did not prove it is the expected board (wrong or no token)",
                          hint=f"serve it with `edgecompile device serve --token ...` and the same {ENV_TOKEN} "
                               "here; another process may have registered this key")


def board_info(sess) -> dict:
    """What the board says about itself (`device serve` registers it); {} for a plain tvm rpc_server."""
    try:
        return json.loads(sess.get_function(BOARD_INFO_FUNC)())
    except Exception:
        return {}


# -- running a bundle on a board --------------------------------------------------------------------

def load(bundle_dir: str | Path, tracker: str, key: str, *, wait: float = 30.0, validate: bool = True):
    """A Runner (same API as edgecompile.runtime.load) whose calls execute on the board `key`
    behind `tracker`: the bundle's TVM library is uploaded, inputs and outputs travel over RPC."""
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.targets.tvm.run import COMPILED_BATCH

    bundle = Bundle.open(bundle_dir)
    if bundle.manifest.get("backend") == "ort":        # a portable ONNX graph: run by the board's ORT
        from edgecompile.targets.ort import remote as ort_remote

        sess = request_board(tracker, key, wait=wait)
        info = {"key": key, "tracker": tracker, **board_info(sess)}
        return ort_remote.load(bundle, sess, info, validate=validate)
    if bundle.manifest.get("backend") != "tvm":
        raise ConfigError(f"{bundle_dir} is a {bundle.manifest.get('backend')} bundle; --remote runs TVM libraries "
                          "and ONNX Runtime bundles", hint="build it with --backend tvm or --backend ort")
    lib = Path(bundle.artifact("library"))
    meta_path = lib.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    inputs, outputs = bundle.io_specs()
    sess = request_board(tracker, key, wait=wait)
    info = board_info(sess)
    if info.get("arch") and meta.get("arch") and info["arch"] != meta["arch"]:
        raise RemoteError(f"board {key!r} is {info['arch']}, but {bundle_dir} holds a {meta['arch']} library",
                          hint="build for the board's target, or use a board of that kind")
    try:
        sess.upload(str(lib))
        rlib = sess.load_module(lib.name)
        from tvm.runtime import vm as tvm_vm

        dev = sess.cpu(0)
        vm = tvm_vm.VirtualMachine(rlib, dev)
    except Exception as exc:
        raise RemoteError(f"loading {lib.name} on board {key!r} failed: {first_line(exc)}",
                          hint=f"the library targets {meta.get('arch', '?')}; is the board that kind, "
                               f"with TVM {meta.get('tvm_version', '')}?") from None
    runner = _remote_runner_class()(vm, inputs, outputs, device=dev, bundle=bundle, validate=validate,
                                    compiled_batch=meta.get("compiled_batch", COMPILED_BATCH))
    runner.session, runner.board = sess, {"key": key, "tracker": tracker, **info}
    return runner


@functools.lru_cache(maxsize=None)
def _remote_runner_class():
    from edgecompile.targets.tvm.run import TvmRunner

    class RemoteTvmRunner(TvmRunner):
        """A TvmRunner whose VM lives on a board; `board` is what the board says about itself."""
        session = None
        board: dict = {}

        def _call(self, arrays):
            try:
                return super()._call(arrays)
            except Exception as exc:
                raise RemoteError(f"running on board {self.board.get('key')!r} failed: {first_line(exc)}") from None

        def _close(self):
            super()._close()
            self.session = None

        def latency(self, feeds, *, runs: int = 50, warmup: int = 10) -> dict:
            """Time `main` on the board (TVM's time_evaluator, one call per sample), so network round
            trips are not counted. Same fields as edgecompile.verify.bench.latency, plus where it ran."""
            tvm = self._tvm
            if self.validate:
                self._check(feeds)
            arrays = [np.ascontiguousarray(feeds[s.name]) for s in self.inputs]
            b = self.compiled_batch
            if b is not None and arrays and arrays[0].ndim and arrays[0].shape[0] != b:
                raise ConfigError(f"batch {arrays[0].shape[0]} on a board: the library is compiled for batch {b}",
                                  hint=f"use --batch {b}")
            try:
                self.vm.set_input("main", *[tvm.runtime.tensor(a, self.device) for a in arrays])
                for _ in range(warmup):
                    self.vm.invoke_stateful("main")
                timer = self.vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=runs)
                costs = np.asarray(timer("main").results, dtype=float) * 1e3
            except Exception as exc:
                raise RemoteError(f"timing on board {self.board.get('key')!r} failed: {first_line(exc)}") from None
            return {
                "p50": float(np.percentile(costs, 50)), "p90": float(np.percentile(costs, 90)),
                "p99": float(np.percentile(costs, 99)), "mean": float(costs.mean()), "min": float(costs.min()),
                "runs": int(costs.size), "warmup": warmup, "batch": int(arrays[0].shape[0]) if arrays else 1,
                "threads": self.board.get("threads"),
                "samples": [round(float(v), 4) for v in costs[:1000]],
                "remote": True, "key": self.board.get("key"), "tracker": self.board.get("tracker"),
                "emulated": bool(self.board.get("emulated", False)), "board": self.board,
            }

    return RemoteTvmRunner


def remote_bench(bundle_dir: str | Path, tracker: str, key: str, *, runs: int = 50, warmup: int = 10,
                 batch: int = 1, wait: float = 30.0) -> dict:
    """Latency of the bundle on the board `key` (synthetic inputs of the declared shapes)."""
    from edgecompile.verify.bench import synthetic_feeds

    with load(bundle_dir, tracker, key, wait=wait) as runner:
        return runner.latency(synthetic_feeds(runner.inputs, batch), runs=runs, warmup=warmup)


# -- the board side ----------------------------------------------------------------------------------

def describe_board(key: str, emulated: bool = False) -> dict:
    info = {"key": key, "arch": platform.machine(), "emulated": bool(emulated or os.environ.get(ENV_EMULATED)),
            "threads": os.cpu_count(), "python": platform.python_version()}
    try:
        from importlib.metadata import version

        info["tvm_version"] = version("apache-tvm")
    except Exception:
        pass
    return info


def _register_board_info():
    """Runs in the RPC server process (TVM's server_init_callback): answer BOARD_INFO_FUNC."""
    import tvm

    info = describe_board(os.environ.get(ENV_KEY, ""))
    tvm.register_global_func(BOARD_INFO_FUNC, lambda: json.dumps(info), override=True)
    token, key = os.environ.get(ENV_TOKEN), os.environ.get(ENV_KEY, "")
    if token:
        tvm.register_global_func(PROOF_FUNC, lambda nonce: _proof(token, key, str(nonce)), override=True)
    from edgecompile.targets.ort.remote import register_board_funcs

    register_board_funcs()      # ORT bundles run on the board too


def serve(tracker: str, key: str, *, host: str = "127.0.0.1", port: int = 9090, port_end: int = 9199,
          emulated: bool = False, token: str | None = None, ready=None) -> None:
    """Run an RPC server for this machine, registered with the tracker under `key`, until interrupted.
    It listens on the first free port in [port, port_end] (both inclusive, as `device serve --port-end` says).
    With `token`, it answers clients' challenges (clients that set EDGECOMPILE_BOARD_TOKEN check them)."""
    parse_address(f"{host}:{port}")
    if port_end < port:
        raise ConfigError(f"--port-end {port_end} is below --port {port}", hint="give a range of ports to try")
    thost, tport = parse_address(tracker)
    rpc = _rpc()
    tracker_summary(tracker)          # fail fast with a one-line error if there is no tracker
    os.environ[ENV_KEY] = key
    if emulated:
        os.environ[ENV_EMULATED] = "1"
    if token:
        os.environ[ENV_TOKEN] = token
    try:
        # TVM's end is exclusive; ours (--port-end, "last port to try") is inclusive
        server = rpc.Server(host, port, port_end + 1, key=key, tracker_addr=(thost, tport), silent=True,
                            server_init_callback=_register_board_info)
    except Exception as exc:
        raise RemoteError(f"cannot start an RPC server on {host}:{port}-{port_end} ({first_line(exc)})") from None
    if ready is not None:
        ready(server, describe_board(key, emulated))
    try:
        server.proc.join()
    finally:
        server.terminate()


def run_tracker(*, host: str = "127.0.0.1", port: int = DEFAULT_TRACKER_PORT, port_end: int | None = None,
                ready=None) -> None:
    """Run TVM's RPC tracker on a loopback address until interrupted."""
    parse_address(f"{host}:{port}")
    _rpc()
    from tvm.rpc.tracker import Tracker

    try:
        tracker = Tracker(host, port=port, port_end=port_end or port + 1, silent=True)
    except Exception as exc:
        raise RemoteError(f"cannot start a tracker on {host}:{port} ({first_line(exc)})",
                          hint="is another one running there? try another --port") from None
    if ready is not None:
        ready(tracker)
    try:
        tracker.proc.join()
    finally:
        tracker.terminate()


def session_board(remote: dict) -> dict:
    """Check the board is on the tracker (one-line error if not) and return what it says about itself."""
    info = board_info(request_board(remote["tracker"], remote["key"], wait=remote.get("wait", 30.0)))
    return {"tracker": remote["tracker"], "key": remote["key"], "arch": info.get("arch"),
            "emulated": bool(info.get("emulated", False))}
