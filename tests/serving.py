"""Servers under test: the real `edgecompile serve` in a subprocess, reached over loopback HTTP (fixtures `pair_bundle`,
`server` and `client` are in tests/conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


from conftest import free_port

TOKEN = "test-token-3f9a"
PAIR_ONNX = """<ir_version: 9, opset_import: ["" : 20]>
pair (float[N, d] x, float[N, e] y) => (float[N, f] z) {
  z = Add(x, y)
}"""


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
