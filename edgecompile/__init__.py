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
    "build": ("edgecompile.pipeline", "build"),
    "evaluate": ("edgecompile.evaluate", "evaluate"),
    "bench": ("edgecompile.bench", "bench"),
    "load": ("edgecompile.runtime", "load"),
    "Bundle": ("edgecompile.bundle", "Bundle"),
    "Config": ("edgecompile.config", "Config"),
    "check": ("edgecompile.regression", "check"),
    "make_baseline": ("edgecompile.regression", "make_baseline"),
}
_SUBMODULES = {"runtime", "errors", "config", "bundle", "metrics", "data", "registry", "report"}

__all__ = ["__version__", *_LAZY, *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"edgecompile.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'edgecompile' has no attribute {name!r}")
