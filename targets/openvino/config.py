"""The [openvino] table of the build config (owned by the OpenVINO backend)."""
from __future__ import annotations

from dataclasses import dataclass

from edgecompile.compiler.schema import bounded, choices


@dataclass(frozen=True)
class OpenVinoSection:
    device: str = "CPU"                  # CPU, GPU, GPU.1, NPU ... where OpenVINO lists it
    performance_hint: str = choices("LATENCY", "THROUGHPUT", default="LATENCY")
    num_streams: int | None = bounded(None, 1, 1024)   # None: what the performance hint picks
    # int8 weights without activation QDQ (dynamic mode): OpenVINO's CPU plugin quantizes the MatMul inputs
    # to int8 per group of this many K elements at run time (0: off, the MatMul then computes in float)
    dynamic_quantization_group_size: int = bounded(64, 0, 65536)   # 64: bench/results/transformer_int8_forms.txt
    # what an int8 graph leaves in float runs in: auto = bf16 where OpenVINO runs it natively and it measures
    # >= 5 % faster with the same outputs, else f32 (bench/results/transformers_amx.txt); f32 or bf16 to pin it
    int8_float_hint: str = choices("auto", "f32", "bf16", default="auto")
