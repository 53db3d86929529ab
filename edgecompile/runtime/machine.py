"""What machine this is: CPU model and the ISA flags that matter for inference speed."""
from __future__ import annotations

import os
import platform
from functools import lru_cache

INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "f16c",
                     "asimd", "asimddp", "fphp", "sve", "i8mm", "bf16")


# ISA features that change which kernels (and so which backend x precision) are fastest.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
               "amx_bf16", "amx_int8", "amx_tile", "asimddp", "i8mm", "sve", "bf16")


def speed_flags_differ(measured_on: dict) -> tuple[set, set] | None:
    """(missing here, extra here) speed flags vs a manifest's `measured_on`, or None if the same arch
    and flags (or the manifest says nothing)."""
    cpu = (measured_on or {}).get("cpu") or {}
    if "flags" not in cpu or cpu.get("arch") != cpu_info()["arch"]:
        return None
    then = set(cpu["flags"]) & set(SPEED_FLAGS)
    now = set(cpu_info()["flags"]) & set(SPEED_FLAGS)
    return None if then == now else (then - now, now - then)


@lru_cache(maxsize=None)
def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "flags": sorted(f for f in flags if f in INTERESTING_FLAGS),
    }


def machine_info() -> dict:
    return {"cpu": cpu_info(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def toolchain_versions() -> dict:
    """Versions of everything that can change a bundle's bytes or behaviour (installed ones only)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["edgecompile", "numpy", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxslim", "torch",
             "torch-pruning", "openvino", "apache-tvm", "apache-tvm-ffi", "tensorrt", "scikit-learn"]
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out
