"""QAT and FP16 benchmark (issue 7).

1. digits top-1 on its test split, every graph run by ONNX Runtime CPU: FP32 graph, PTQ graph
   (the quantize pass, same preset and calibration), and the QAT graph (QAT pass -> dynamo export
   -> weight folding) for each requested epoch count; plus the pass's own torch fake-quant numbers.
2. FP16 vs FP32 under ONNX Runtime CPU: size ratio, output cosine, and latency measured side by
   side (interleaved rounds, edgecompile.verify.bench.interleaved) at batch 1 and batch 64.

    .venv/bin/python bench/qat_fp16.py [--epochs 0,1,3] [--models digits,resnet18] [--seconds 4]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization import cpu_line, fp32_graph, ours  # noqa: E402


def top1(model_bytes: bytes, ds) -> float:
    from edgecompile.targets.ort.build import ort_outputs

    return float(np.mean(ort_outputs(model_bytes, ds.batches(64))[0].argmax(1) == ds.labels))


def qat_graph(src, epochs: int):
    import onnx_ir as ir

    from edgecompile.compiler.config import QuantizeSection
    from edgecompile.compiler.export import export_torch
    from edgecompile.passes.module.qat import QuantizationAwareTraining
    from edgecompile.passes.module.qat_graph import fold_weight_quantize
    from edgecompile.passes.base import PassContext

    ctx = PassContext(config=None, profile=None, backend="ort", source=src,
                      calibration=src.dataset("calibration"), evaluation=src.dataset("test"),
                      train=src.dataset("train"))
    res = QuantizationAwareTraining(QuantizeSection(mode="qat", qat_epochs=epochs))(copy.deepcopy(src.module()), ctx)
    model = export_torch(res.module, src, src.dataset("test"))
    fold_weight_quantize(model)
    return ir.to_proto(model).SerializeToString(), res.notes["comparison"]


def fp16_bench(name: str, seconds: float) -> list[str]:
    import onnx_ir as ir

    from edgecompile.verify.bench import interleaved
    from edgecompile.verify.metrics import raw_similarity
    from edgecompile.passes.fp16 import Float16
    from edgecompile.targets.ort.run import create_session

    src, model = fp32_graph(name)
    b32 = ir.to_proto(model).SerializeToString()
    b16 = ir.to_proto(Float16()(ir.from_proto(ir.to_proto(model))).model).SerializeToString()
    s32, s16 = create_session(b32), create_session(b16)
    ds = src.dataset(src.default_evaluation.split(":")[1]).take(64)
    x = next(ds.batches(64))
    sim = raw_similarity(s16.run(None, x)[0], s32.run(None, x)[0])
    rows = []
    for batch in (1, 64):
        f = {k: v[:batch] for k, v in x.items()}
        lat = interleaved({"fp32": lambda f=f: s32.run(None, f), "fp16": lambda f=f: s16.run(None, f)},
                          rounds=8, seconds=seconds)
        rows.append(
            f"| {name} | {batch} | {len(b16) / len(b32):.3f} | {sim['cosine']:.6f} | "
            f"{lat['fp32']['ms']:.4f} | {lat['fp16']['ms']:.4f} | {lat['fp32']['ms'] / lat['fp16']['ms']:.2f}x |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", default="0,1,3")
    ap.add_argument("--models", default="digits")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    import onnx_ir as ir

    print(f"CPU: {cpu_line()}\n")
    src, model = fp32_graph("digits")
    test = src.dataset("test")
    fp32 = top1(ir.to_proto(model).SerializeToString(), test)
    ptq_bytes, _ = ours(src, model, "minmax")
    print("| digits (ORT CPU, test split n=360) | top-1 | torch fake-quant fp32 / ptq-init / qat |")
    print("|---|---|---|")
    print(f"| FP32 graph | {fp32:.4f} | |")
    print(f"| PTQ static minmax (quantize pass) | {top1(ptq_bytes, test):.4f} | |")
    for e in (int(v) for v in args.epochs.split(",")):
        qbytes, c = qat_graph(src, e)
        print(f"| QAT {e} epochs | {top1(qbytes, test):.4f} | {c['fp32']:.4f} / {c['ptq']:.4f} / {c['qat']:.4f} |")
    print("\n| model | batch | size fp16/fp32 | cosine | fp32 ms | fp16 ms | fp16 speedup |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for row in fp16_bench(name, args.seconds):
            print(row)


if __name__ == "__main__":
    main()
