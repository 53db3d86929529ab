"""The [tensorrt] table of the build config (owned by the TensorRT backend)."""
from __future__ import annotations

from dataclasses import dataclass

from edgecompile.compiler.schema import bounded, choices


@dataclass(frozen=True)
class TensorRtSection:
    """Builder settings for `--backend tensorrt` (Jetson targets); stored in the bundle's build plan."""
    version: str = choices("10.1", default="10.1")          # operator table the graph is checked against
    workspace_mb: int = bounded(1024, 1, 1 << 20)   # builder workspace memory pool limit
    min_batch: int = bounded(1, 1, 1 << 16)         # optimization profile for a dynamic batch
    opt_batch: int = bounded(1, 1, 1 << 16)
    max_batch: int = bounded(8, 1, 1 << 16)
    dla_core: int | None = bounded(None, 0, 15)     # run on this DLA core (GPU fallback on)
    gpu_fallback: bool = True
    int8: str = choices("auto", "explicit", "implicit", default="auto")   # auto: explicit when Q/DQ present
    timing_cache: bool = True                                 # persist tactic timings on the device
    optimization_level: int = bounded(3, 0, 5)      # builder_optimization_level 0..5
    cpu_fallback: bool = True                                 # TVM AArch64 library in the same bundle
