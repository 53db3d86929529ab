"""The Backend base class: every hook the compiler calls on a backend, with its default.

A backend lives in `targets/<name>/`: `build.py` holds its `Backend` subclass (compile side: graph in,
bundle artifacts out) and `run.py` its run side (`availability()`, `load(bundle, ...) -> Runner`), the
only part `edgecompile.runtime` imports. Engines are imported lazily, inside the functions that use them.

    class MyBackend(Backend):
        name = "mine"; run_module = "edgecompile.targets.mine.run"
        precisions = ("fp32", "int8"); quant_preset = QuantPreset("uint8", "int8", symmetric_activations=False)
        config_section = "mine"             # its own TOML table, a field of edgecompile.compiler.config.Config
        def compile(self, model, ctx) -> Artifacts: ...

The compiler never probes a backend with hasattr/getattr: what is not overridden takes the default here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.runtime.runner import Availability

__all__ = ["Availability", "Artifacts", "Backend", "BuildContext", "QuantPreset"]


@dataclass(frozen=True)
class QuantPreset:
    """How a backend wants its QDQ graph (the contract's table of presets)."""

    activations: str                 # "uint8" | "int8"
    weights: str                     # "int8" | "uint8"
    symmetric_activations: bool      # zero-point 0 (int8) / 128 (uint8)
    symmetric_weights: bool = True
    per_channel: bool = True
    float_stem_channels: int = 0     # convs reading at most this many input channels stay float (0: none) ...
    float_stem_outputs: int = 8      # ... when they also write at most this many channels (passes/float_stems.py)


# ORT/OpenVINO run U8S8: asymmetric uint8 activations, per-channel symmetric int8 weights.
U8S8 = QuantPreset("uint8", "int8", symmetric_activations=False)


@dataclass
class BuildContext:
    """What a backend's compile step may use."""

    writer: Any                 # edgecompile.compiler.writer.BundleWriter (write files with writer.path(rel))
    profile: Any                # targets.profiles.DeviceProfile
    config: Any                 # edgecompile.compiler.config.Config
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


class Backend:
    """Defaults for every hook; a backend overrides what it has."""

    name: str = ""
    run_module: str = ""                         # its run side: availability() and load(bundle, ...)
    precisions: tuple[str, ...] = ("fp32",)      # what `--precision` may ask of it
    fp16_graph: bool = False                     # fp16 = an FP16 ONNX graph (our pass), not an engine flag
    quant_preset: QuantPreset = U8S8             # how it wants QDQ graphs
    config_section: str | None = None            # its TOML table (a field of Config), if it has one
    portable: bool = False                       # its bundle runs on any arch (ORT: a plain ONNX graph)

    def _run_side(self):
        return importlib.import_module(self.run_module)

    def check_available(self) -> Availability:
        """Whether this machine can build (and run) with it; the run side's answer by default."""
        return self._run_side().availability()

    def check_config(self, config) -> None:
        """Fail fast (before export) on settings this backend cannot honour. Raises ConfigError."""

    def auto_candidate(self, model, plan) -> Availability:
        """Whether `--backend auto` should measure this prepared graph (e.g. a tuned TVM only)."""
        return Availability(True, "measured")

    def compile(self, model, ctx: BuildContext) -> Artifacts:
        raise NotImplementedError(f"backend {self.name!r} does not compile")

    def load(self, bundle, *, threads: int | None = None, validate: bool = True, progress=None):
        """A Runner for a bundle this backend built (the run side's `load`)."""
        return self._run_side().load(bundle, threads=threads, validate=validate, progress=progress)
