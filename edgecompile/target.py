"""The Target seam: a backend that compiles an ONNX graph into bundle artifacts and loads them.

    class Target(Protocol):
        name: str
        def check_available(self) -> Availability
        def compile(self, model, ctx: BuildContext) -> Artifacts     # files written into ctx.staging
        def load(self, bundle, *, threads=None, validate=True) -> Runner

Backends live in `targets/<name>.py` and import their engine lazily.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str                 # version when ok, else why not (missing package, no GPU ...)
    hint: str | None = None


@dataclass
class BuildContext:
    """What a backend's compile step may use."""

    writer: Any                 # edgecompile.bundle.BundleWriter (write files with writer.path(rel))
    profile: Any                # targets.profiles.DeviceProfile
    config: Any                 # edgecompile.config.Config
    precision: str              # the precision the graph was prepared for
    source: Any                 # edgecompile.source.ModelSource
    calibration: Any = None     # edgecompile.data.Dataset | None
    evaluation: Any = None      # edgecompile.data.Dataset | None (build-time estimates only)
    threads: int | None = None
    progress: Any = None
    options: dict = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.writer.staging


@dataclass
class Artifacts:
    """Files a backend wrote: {relative path: role}, plus backend options stored in the manifest."""

    files: dict[str, str]
    backend_options: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


class Target(Protocol):
    name: str

    def check_available(self) -> Availability: ...

    def compile(self, model, ctx: BuildContext) -> Artifacts: ...

    def load(self, bundle, *, threads: int | None = None, validate: bool = True): ...
