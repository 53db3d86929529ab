"""The error hierarchy. Every error carries a one-line message, an optional hint and an exit code.

Exit codes (the contract): 0 ok, 1 error, 2 usage or config error, 3 a gate failed.
"""
from __future__ import annotations


class EdgeCompileError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(EdgeCompileError):
    """Bad config file, unknown key, wrong type, bad flag value, unknown target/backend."""
    exit_code = 2


class DataError(EdgeCompileError):
    """Input data (calibration, evaluation, runtime feeds) with the wrong name, shape, dtype or values."""
    exit_code = 2


class ModelLoadError(EdgeCompileError):
    pass


class ExportError(EdgeCompileError):
    pass


class PassError(EdgeCompileError):
    pass


class TargetUnavailableError(EdgeCompileError):
    pass


class CompileError(EdgeCompileError):
    pass


class BundleError(EdgeCompileError):
    pass


class GateError(EdgeCompileError):
    """A gate failed: accuracy or latency bound in `check`, or a precision not met under --strict."""
    exit_code = 3


class RemoteError(EdgeCompileError):
    """The RPC tracker or a board behind it cannot be reached, refuses the request, or fails a run."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of a third-party exception's text (no traceback lines), for one-line errors."""
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return line[:limit]
    return exc.__class__.__name__
