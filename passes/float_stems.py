"""Which convs a backend's QDQ preset keeps in float (`QuantPreset.float_stem_channels`).

A conv that reads an image (3 or 4 channels) has too little depth for an integer GEMM to pay off: ONNX
Runtime's QLinearConv on the detector's 3->8 stem took 103 us against 57 us for its float NCHWc conv, a
third of the INT8 graph's time. The ORT preset therefore leaves such stems float (measured in
bench/results/tasks.txt); their outputs are quantized as usual, so the rest of the graph stays integer.
"""
from __future__ import annotations


def float_stems(proto, preset) -> list[str]:
    """Named Conv nodes of `proto` reading at most `preset.float_stem_channels` (a QuantPreset) input channels: the
    backend runs them faster in float than as an integer conv, so the QDQ graph leaves them float."""
    if preset.float_stem_channels <= 0:
        return []
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        w = shapes.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if not n.name or w is None or len(w) < 3:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1) or 1
        if w[1] * group <= preset.float_stem_channels:
            out.append(n.name)
    return out
