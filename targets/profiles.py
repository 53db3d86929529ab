"""Device profiles: what `--target` names. Data, not code branches.

A profile says which backends may compile for it, the default backend and precision, and
the backend-specific descriptions (TVM target dict, cross compiler, GPU arch). Backends read
the fields they need; the pipeline reads `backends`, `default_backend` and `default_precision`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from edgecompile.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    arch: str                              # "x86_64" | "aarch64"
    backends: tuple[str, ...]
    default_backend: str
    default_precision: str = "fp32"
    tvm_target: Mapping[str, Any] | None = None   # JSON-dict form accepted by tvm.target.Target
    cross_compiler: str | None = None             # executable used to link AArch64 shared libraries
    gpu: Mapping[str, Any] | None = None          # e.g. {"vendor": "nvidia", "sm": 87}
    aliases: tuple[str, ...] = field(default=())


# `--backend auto` for a foreign-arch target with no board to measure on: this backend, said so plainly
# (ONNX Runtime: portable ONNX, fast without tuning; TVM needs tuning on the board to be competitive).
NO_BOARD_DEFAULT = "ort"


_AARCH64_GCC = "aarch64-linux-gnu-gcc"

PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in [
        DeviceProfile(
            name="cpu",
            description="this host's x86-64 CPU",
            arch="x86_64",
            backends=("ort", "openvino", "tvm", "auto"),
            default_backend="auto",                # measures ort/openvino(/tvm) here, ships the fastest
            tvm_target={"kind": "llvm"},   # -mcpu is filled in from the detected host CPU
        ),
        DeviceProfile(
            name="arm64",
            description="generic AArch64 with NEON",
            arch="aarch64",
            backends=("tvm", "ort", "auto"),
            default_backend="auto",                # no board: ort (said so); with --remote: measured there
            tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
            cross_compiler=_AARCH64_GCC,
        ),
        DeviceProfile(
            name="rpi4",
            description="Raspberry Pi 4 (Cortex-A72)",
            arch="aarch64",
            backends=("tvm", "ort", "auto"),
            default_backend="auto",                # no board: ort (said so); with --remote: measured there
            tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                        "mattr": ["+neon"], "num-cores": 4},
            cross_compiler=_AARCH64_GCC,
        ),
        DeviceProfile(
            name="rpi5",
            description="Raspberry Pi 5 (Cortex-A76)",
            arch="aarch64",
            backends=("tvm", "ort", "auto"),
            default_backend="auto",                # no board: ort (said so); with --remote: measured there
            tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                        "mattr": ["+neon", "+dotprod", "+fullfp16"], "num-cores": 4},
            cross_compiler=_AARCH64_GCC,
        ),
        DeviceProfile(
            name="jetson-orin",
            description="NVIDIA Jetson Orin (sm_87 GPU, Cortex-A78AE CPU)",
            arch="aarch64",
            backends=("tensorrt",),
            default_backend="tensorrt",
            default_precision="fp16",
            tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78",
                        "mattr": ["+neon", "+dotprod", "+fullfp16"], "num-cores": 8},
            cross_compiler=_AARCH64_GCC,
            gpu={"vendor": "nvidia", "sm": 87, "dla_cores": 2},
            aliases=("jetson",),
        ),
        DeviceProfile(
            name="jetson-xavier",
            description="NVIDIA Jetson Xavier (sm_72 GPU, Carmel CPU)",
            arch="aarch64",
            backends=("tensorrt",),
            default_backend="tensorrt",
            default_precision="fp16",
            tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "carmel",
                        "mattr": ["+neon", "+fullfp16"], "num-cores": 8},
            cross_compiler=_AARCH64_GCC,
            gpu={"vendor": "nvidia", "sm": 72, "dla_cores": 2},
        ),
    ]
}

_ALIASES = {alias: p.name for p in PROFILES.values() for alias in p.aliases}


def target_names() -> list[str]:
    """Every name `--target` accepts (profiles and aliases)."""
    return sorted([*PROFILES, *_ALIASES])


def get_profile(name: str) -> DeviceProfile:
    key = _ALIASES.get(name, name)
    try:
        return PROFILES[key]
    except KeyError:
        raise ConfigError(
            f"unknown target {name!r}",
            hint=f"choose one of: {', '.join(target_names())} (see `edgecompile targets`)",
        ) from None


def resolve_backend(profile: DeviceProfile, backend: str | None) -> str:
    """The backend to use for `profile`, validating an explicit choice."""
    if backend is None:
        return profile.default_backend
    if backend not in profile.backends:
        raise ConfigError(
            f"backend {backend!r} is not available for target {profile.name!r}",
            hint=f"target {profile.name} supports: {', '.join(profile.backends)}",
        )
    return backend
