"""The bundle's manifest.json as the compiler writes it (the runtime reads it: edgecompile.runtime.bundle)."""
from __future__ import annotations

from edgecompile.runtime.machine import machine_info, toolchain_versions
from edgecompile.runtime.specs import TensorSpec


def manifest(plan, model, precision: str, records, artifacts, parity) -> dict:
    """The manifest of a bundle built by `plan` from `model` (an onnx_ir Model)."""
    from edgecompile import __version__

    def specs(values) -> list[dict]:
        res = []
        for v in values:
            shape = tuple(d if isinstance(d, int) else str(d) for d in (v.shape or ()))
            if v.dtype is None:
                dtype = "float32"
            else:                       # strings as "str" (numpy unicode arrays at the runtime)
                dtype = "str" if v.dtype.name == "STRING" else v.dtype.numpy().name
            res.append(TensorSpec(v.name, shape, dtype).to_dict())
        return res

    opsets = dict(model.opset_imports)
    return {
        "bundle_id": plan.bundle_id(),
        "created_by": f"edgecompile {__version__}",
        "model": {"name": plan.source.name, "kind": plan.source.kind, "fingerprint": plan.source.fingerprint,
                  "opset": opsets.get("", None),
                  **({"adapter": plan.source.adapter} if getattr(plan.source, "adapter", None) else {})},
        "target": plan.profile.name,
        "backend": plan.backend,
        "profile": {"name": plan.profile.name, "description": plan.profile.description, "arch": plan.profile.arch},
        "precision": precision,
        "requested_precision": plan.precision,
        "inputs": specs(model.graph.inputs),
        "outputs": specs(model.graph.outputs),
        "preprocessing": plan.source.preprocessing,
        "labels": plan.source.class_labels,
        "metric": plan.source.metric,
        "passes": [{"name": r.name, "kind": r.kind, "options": r.options, "modified": r.modified} for r in records],
        "backend_options": artifacts.backend_options,
        "artifact_status": artifacts.notes.get("artifact_status"),
        "config": plan.config.to_dict(),
        "data": {"calibration": plan.calibration.describe() if plan.calibration is not None else None,
                 "evaluation": plan.evaluation.describe() if plan.evaluation is not None else None},
        "toolchain": toolchain_versions(),
        "measured_on": machine_info(),
        "runs_on_host": plan.profile.arch == machine_info()["cpu"]["arch"] or plan.target.portable,
        **({"frontend": plan.source.frontend} if plan.source.frontend else {}),
    }
