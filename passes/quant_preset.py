"""Which INT8 scheme a quantization follows: the backend's preset (`Backend.quant_preset`, the
contract's table) with the [passes.quantize] overrides applied (static PTQ, dynamic PTQ and QAT alike)."""
from __future__ import annotations

from dataclasses import replace

from edgecompile.errors import ConfigError
from edgecompile.targets.base import U8S8, QuantPreset


def backend_preset(backend: str) -> QuantPreset:
    """The preset the backend declares (`Backend.quant_preset`, the contract's table); U8S8 for unknown names."""
    from edgecompile.compiler import registry

    return registry.get_target(backend).quant_preset if backend in registry.target_names() else U8S8


def preset_for(backend: str) -> tuple[str, QuantPreset]:
    return backend, backend_preset(backend)


def settings(section, backend: str) -> tuple[str, QuantPreset]:
    """The backend's preset with the config's explicit overrides applied."""
    name, preset = preset_for(backend)
    over = {}
    if section.activations is not None:
        over["activations"] = section.activations
    if section.weights is not None:
        over["weights"] = section.weights
        over["symmetric_weights"] = section.weights == "int8"
    if section.symmetric_activations is not None:
        over["symmetric_activations"] = section.symmetric_activations
    if section.per_channel != preset.per_channel:
        over["per_channel"] = section.per_channel
    if section.float_stem_channels is not None and section.float_stem_channels != preset.float_stem_channels:
        over["float_stem_channels"] = section.float_stem_channels
    if over:
        preset = replace(preset, **over)
        name += " (overridden)"
    base = backend_preset(backend)
    needs_symmetric = base.symmetric_activations and base.activations == "int8"
    if needs_symmetric and not (preset.symmetric_activations and preset.activations == "int8"):
        raise ConfigError(f"backend {backend!r} needs symmetric int8 activations (zero-point 0)",
                          hint=f"drop the [passes.quantize] activations/symmetric_activations overrides for {backend}")
    return name, preset
