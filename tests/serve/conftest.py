"""Servers under test: the real `edgecompile serve` in a subprocess, reached over loopback HTTP."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port

TOKEN = "test-token-3f9a"
PAIR_ONNX = """<ir_version: 9, opset_import: ["" : 20]>
pair (float[N, d] x, float[N, e] y) => (float[N, f] z) {
  z = Add(x, y)
}"""


@pytest.fixture(scope="session")
def pair_bundle(tmp_path_factory):
    """z = x + y with independent symbolic widths: the engine itself fails when the widths differ."""
    import onnx
    import onnx.parser

    import edgecompile

    d = tmp_path_factory.mktemp("pair")
    onnx.save(onnx.parser.parse_model(PAIR_ONNX), d / "pair.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.random((16, 4), dtype=np.float32), y=rng.random((16, 4), dtype=np.float32))
    return edgecompile.build(d / "pair.onnx", target="cpu", backend="ort", data=d / "data.npz", output=d / "bundle")


class Server:
    def __init__(self, args, env=None, cwd=None):
        import httpx

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgecompile-serve-{self.port}.log"
        self._log = open(self.log, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgecompile", "serve", *map(str, args),
                                      "--port", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after 90 s: {self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(digits_bundle, pair_bundle):
    """digits + pair, bearer token (from the environment), CORS for one origin, a 1 MiB body limit."""
    s = Server([digits_bundle.path, f"pair={pair_bundle.path}", "--max-body-mb", "1",
                "--cors-origin", "http://app.example"], env={"EDGECOMPILE_SERVE_TOKEN": TOKEN})
    yield s
    assert s.stop() == 0, s.output()
    assert "Traceback" not in s.output()


@pytest.fixture(scope="module")
def client(server):
    import httpx

    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c
