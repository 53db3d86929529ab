"""AdaRound on pretrained MobileNetV2 (ONNX graph + photo crops): round-to-nearest vs learned rounding
with the layers' inputs from the quantized graph (the paper's asymmetric variant) or from FP32.

All variants start from the SAME calibration (equalization + range search of the default static INT8,
`Quantize(adaround=False)`; its state is cached in --state so variants can be re-run without
recalibrating) and end with bias correction; agreement with ORT FP32 on the 480 held-apart crops.

    .venv/bin/python bench/adaround_inputs.py [inputs=quantized] [inputs=fp32,lam=3] ...
                                              (--state /tmp/adaround_state.pkl) > bench/results/adaround_inputs.txt
Each argument is one variant: comma-separated AdaRound options (passes/adaround.py AdaRound.__init__).
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization import cpu_line, fp32_graph  # noqa: E402  (sibling bench scripts)
from real_models import load, ort_fn, outputs  # noqa: E402


def value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    import onnx
    import onnx_ir as ir

    import edgecompile.passes.adaround as adaround
    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.passes.quantize import Quantize
    from edgecompile.progress import Progress
    from edgecompile.verify.agreement import agreement

    args = [a for a in sys.argv[1:] if not a.startswith("--state")]
    state = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--state=")), "/tmp/adaround_state.pkl")
    variants = [{k: value(v) for k, v in (kv.split("=", 1) for kv in arg.split(",") if kv)} for arg in args]
    print(f"CPU: {cpu_line()}; load average {load()} at the start", flush=True)
    src, model = fp32_graph("mobilenetv2")
    cal = src.dataset("calibration").take(256)
    x = src.dataset("test").inputs["input"]
    ref = outputs(ort_fn(ir.to_proto(model).SerializeToString()), x)

    def show(tag, q, secs, notes):
        a = agreement(outputs(ort_fn(q), x), ref)
        print(f"{tag}: top-1 agreement {100 * a['top1_agreement']:.2f} %, "
              f"confident {100 * a['confident_agreement']:.2f} %"
              f" (n={a['confident_samples']}), top-5 {100 * a['top5_containment']:.2f} %, mean KL {a['mean_kl']:.4f}; "
              f"{secs:.0f} s; {notes}", flush=True)

    section = QuantizeSection(calib_samples=256, adaround=False)
    if not os.path.exists(state):
        t = time.perf_counter()
        p = Quantize(section, backend="ort", calibration=cal, progress=Progress())
        res = p(model)
        show("round-to-nearest (default static INT8)", ir.to_proto(res.model).SerializeToString(),
             time.perf_counter() - t, res.notes.get("bias_correction"))
        proto, batches, preset, ranges, notes, steps = p._rounding
        Path(state).write_bytes(pickle.dumps((proto.SerializeToString(), batches, preset, ranges, notes, steps)))
    saved = pickle.loads(Path(state).read_bytes())
    original = adaround.adaround_proto
    for options in variants:
        adaround.adaround_proto = lambda *a, _o=options, **kw: original(*a, **{**kw, **_o})
        p = Quantize(section, backend="ort", calibration=cal, progress=Progress())
        proto = onnx.ModelProto()
        proto.ParseFromString(saved[0])
        p._rounding = (proto, saved[1], saved[2], saved[3], dict(saved[4]), dict(saved[5]))
        t = time.perf_counter()
        res = p.adaround()
        show(f"AdaRound {options}", ir.to_proto(res.model).SerializeToString(), time.perf_counter() - t,
             res.notes.get("adaround"))
    print(f"load average {load()} at the end")


if __name__ == "__main__":
    main()
