"""EdgeCompile: compile models for edge devices into verified bundles.

    import edgecompile
    bundle = edgecompile.build("models/digits", target="cpu", output="out/")
    runner = edgecompile.runtime.load("out/")

Importing this package is cheap and imports no torch, tvm, openvino or tensorrt: the heavy
parts are imported when a function that needs them is called.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "build": ("edgecompile.compiler.pipeline", "build"),
    "evaluate": ("edgecompile.verify.evaluate", "evaluate"),
    "bench": ("edgecompile.verify.bench", "bench"),
    "load": ("edgecompile.runtime", "load"),
    "Bundle": ("edgecompile.runtime.bundle", "Bundle"),
    "Config": ("edgecompile.compiler.config", "Config"),
    "check": ("edgecompile.verify.regression", "check"),
    "make_baseline": ("edgecompile.verify.regression", "make_baseline"),
}
_SUBMODULES = {"runtime": "edgecompile.runtime", "errors": "edgecompile.errors", "data": "edgecompile.data",
               "source": "edgecompile.source", "report": "edgecompile.report", "compiler": "edgecompile.compiler",
               "verify": "edgecompile.verify", "config": "edgecompile.compiler.config",
               "bundle": "edgecompile.runtime.bundle", "metrics": "edgecompile.verify.metrics",
               "registry": "edgecompile.compiler.registry"}

__all__ = ["__version__", *_LAZY, *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(_SUBMODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'edgecompile' has no attribute {name!r}")
