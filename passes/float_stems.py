"""Which convs a backend's QDQ preset keeps in float (`QuantPreset.float_stem_channels` / `float_stem_outputs`).

A narrow stem -- a conv reading an image (<= 4 channels) into few channels (<= 8) -- is too small a GEMM
(K = 9 x 3, N = 8 for the shapes detector) for ONNX Runtime's integer conv to pay for its packing and
requantization: on the detector's 3->8 stem QLinearConv took 103 us against 57 us for the float NCHWc
conv, a third of the INT8 graph's time; with the stem float the whole INT8 graph ran 1.15x faster
(bench/results/tasks.txt, int8-all / int8). Wider stems (MobileNetV2's 3->32, ResNet's 3->64 at 224x224)
measured slightly faster as integer convs in a two-conv probe, and 1->16 / 3->16 stems came out even or
mixed, so only stems of <= 8 outputs stay float. The stems' outputs are quantized as usual, so the rest
of the graph stays integer.
"""
from __future__ import annotations


def float_stems(proto, preset) -> list[str]:
    """Named Conv nodes of `proto` reading at most `preset.float_stem_channels` (a QuantPreset) input channels
    and writing at most `preset.float_stem_outputs`: the QDQ graph leaves them float."""
    if preset.float_stem_channels <= 0:
        return []
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        w = shapes.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if not n.name or w is None or len(w) < 3:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1) or 1
        if w[1] * group <= preset.float_stem_channels and w[0] <= preset.float_stem_outputs:
            out.append(n.name)
    return out
