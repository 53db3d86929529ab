"""The [tvm] table of the build config (owned by the TVM backend)."""
from __future__ import annotations

from dataclasses import dataclass

from edgecompile.compiler.schema import bounded
from edgecompile.errors import ConfigError


@dataclass(frozen=True)
class TvmSection:
    tune_trials: int = bounded(0, 0, 10_000_000)
    tune_timeout: float | None = bounded(None, 0.01, 100_000)   # minutes
    remote: str | None = None           # "HOST:PORT" of a TVM RPC tracker: tune on a board there (loopback only)
    remote_key: str | None = None       # the board's key on that tracker, e.g. "rpi5"

    def __post_init__(self):
        if bool(self.remote) != bool(self.remote_key):
            raise ConfigError("config keys 'tvm.remote' and 'tvm.remote_key' go together (--remote with --key)",
                              hint="e.g. --remote 127.0.0.1:9190 --key rpi5")
