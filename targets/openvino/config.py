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
