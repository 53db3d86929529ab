"""Lookup of backends (targets) and graph passes by name.

Built-in names map to "module:attr" strings so nothing is imported until it is used; third-party
packages add more through the `edgecompile.targets` / `edgecompile.passes` entry-point groups.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from edgecompile.errors import ConfigError

BUILTIN_TARGETS: dict[str, str] = {
    "ort": "edgecompile.targets.ort.build:OrtTarget",
    "openvino": "edgecompile.targets.openvino.build:OpenVinoTarget",
    "tvm": "edgecompile.targets.tvm.build:TvmTarget",
    "tensorrt": "edgecompile.targets.tensorrt.build:TensorRtTarget",
}

BUILTIN_PASSES: dict[str, str] = {
    "simplify": "edgecompile.passes.simplify:Simplify",
    "prune": "edgecompile.passes.module.prune:Prune",
    "distill": "edgecompile.passes.module.distill:Distill",
    "quantize": "edgecompile.passes.quantize:Quantize",
    "qat": "edgecompile.passes.module.qat:QuantizationAwareTraining",
    "fp16": "edgecompile.passes.fp16:Float16",
    "transformer_fusion": "edgecompile.passes.transformer_fusion:TransformerFusion",
}


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@lru_cache(maxsize=None)
def _group(group: str, builtins: tuple[tuple[str, str], ...]) -> dict[str, str]:
    found = dict(builtins)
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep.value)
    return found


def target_names() -> list[str]:
    return sorted(_group("edgecompile.targets", tuple(BUILTIN_TARGETS.items())))


def get_target(backend: str):
    """An instance of the Target implementing `backend`."""
    refs = _group("edgecompile.targets", tuple(BUILTIN_TARGETS.items()))
    if backend not in refs:
        raise ConfigError(f"unknown backend {backend!r}", hint=f"known backends: {', '.join(sorted(refs))}")
    return _load(refs[backend])()


def backend_config_sections() -> list[str]:
    """The config tables the installed backends own (`Backend.config_section`)."""
    return [s for s in (get_target(n).config_section for n in target_names()) if s]


def has_pass(name: str) -> bool:
    return name in _group("edgecompile.passes", tuple(BUILTIN_PASSES.items()))


def get_pass(name: str):
    refs = _group("edgecompile.passes", tuple(BUILTIN_PASSES.items()))
    if name not in refs:
        raise ConfigError(f"unknown pass {name!r}", hint=f"known passes: {', '.join(sorted(refs))}")
    return _load(refs[name])
