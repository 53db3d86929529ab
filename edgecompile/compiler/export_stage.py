"""The export stage of a build: torch source -> module passes -> ONNX (+ parity), cached by content key;
and the FP32 reference outputs every later stage is measured against."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompile.compiler.export import check_parity, export_torch
from edgecompile.compiler.plan import export_key, module_passes
from edgecompile.compiler.writer import json_default
from edgecompile.passes.base import PassRecord, run_module_passes


def reference_outputs(plan, module) -> np.ndarray | None:
    """FP32 reference on the evaluation set: torch for torch sources, ORT on the source ONNX otherwise."""
    ds = plan.evaluation
    if ds is None:
        return None
    if plan.source.kind == "torch":
        from edgecompile.compiler.training import predict

        return predict(module, ds)[0]
    from edgecompile.targets.ort.build import explain_load_error, ort_outputs

    try:
        # a path: external data resolves next to it
        return ort_outputs(str(plan.source.path), ds.batches(64), join=ds.stack_outputs)[0]
    except Exception as exc:
        from edgecompile.errors import ModelLoadError

        raise ModelLoadError(f"{plan.source.path}: ONNX Runtime cannot run the source model for the FP32 "
                             f"reference: {explain_load_error(exc)}",
                             hint="the reference for .onnx sources is the model under ORT FP32; "
                                  "use ops/opsets onnxruntime supports") from None


def load_onnx(plan):
    import onnx_ir as ir

    from onnx_ir.external_data import load_to_model

    # External data is read into memory: the pipeline hands models to ORT and backends as bytes.
    return load_to_model(ir.load(str(plan.source.path)))


def export_stage(plan, ctx, records: list, progress, cache):
    """torch source -> (onnx_ir model, FP32 reference outputs, parity, "hit"|"miss"|None), from the
    cache when possible."""
    import onnx_ir as ir

    key = export_key(plan) if cache.enabled else None
    hit = cache.get("export", key) if key else None
    if hit is not None:
        import json

        import onnx

        with progress.step("export", f"cache hit {key[:12]}"):
            meta = json.loads((hit / "meta.json").read_text())
            model = ir.from_proto(onnx.load_model_from_string((hit / "model.onnx").read_bytes()))
            reference = np.load(hit / "reference.npy") if meta["reference"] else None
        for r in meta["records"]:
            r = dict(r)
            r.pop("metric_delta", None)
            records.append(PassRecord(**r))
        return model, reference, meta["parity"], "hit"

    with progress.step("load", plan.source.name):
        module = plan.source.module()
    reference = reference_outputs(plan, module)
    mpasses = module_passes(plan)
    first = len(records)
    if mpasses:
        import copy

        with progress.step("module passes", ", ".join(p.name for p in mpasses)):
            module = run_module_passes(mpasses, copy.deepcopy(module), ctx, records)
    example = plan.evaluation or plan.calibration or plan.train
    with progress.step("export", "torch -> ONNX (dynamo)"):
        model = export_torch(module, plan.source, example)
    with progress.step("parity", "ONNX vs torch"):
        parity = check_parity(model, module, example, plan.source.outputs, plan.classifier)
    if key:
        import json

        def fill(d: Path) -> None:
            (d / "model.onnx").write_bytes(ir.to_proto(model).SerializeToString())
            if reference is not None:
                np.save(d / "reference.npy", reference)
            meta = {"parity": parity, "reference": reference is not None,
                    "records": [r.to_dict() for r in records[first:]]}
            (d / "meta.json").write_text(json.dumps(meta, default=json_default))

        cache.put("export", key, fill)
    return model, reference, parity, "miss" if key else None
