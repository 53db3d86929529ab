"""The precision stage: turn the FP32 graph into the requested precision, or say why not.

Contract: `fp32` is real FP32. A request that cannot be met ships the best precision that does,
says so loudly (CLI + report) and exits 0; `--strict` makes that exit 3; `--force` ships the
requested precision regardless of accuracy/latency (it cannot conjure a precision the backend
does not implement: that is a CompileError).
"""
from __future__ import annotations

from edgecompile.errors import CompileError


def supported(target) -> tuple[str, ...]:
    return tuple(getattr(target, "precisions", ("fp32",)))


def apply(plan, model, ctx, records, progress):
    """Returns (model, achieved precision, notes)."""
    requested = plan.precision
    if requested == "fp32":
        return model, "fp32", {}
    available = supported(plan.target)
    if requested == "auto":
        return model, "fp32", {"reason": "automatic precision choice is not implemented yet; kept fp32"}
    if requested not in available:
        reason = f"backend {plan.backend!r} does not implement {requested} (it has: {', '.join(available)})"
        if plan.config.build.force:
            raise CompileError(f"cannot force precision {requested}: {reason}",
                               hint="choose a backend that implements it (see `edgecompile targets`)")
        return model, "fp32", {"reason": reason}
    return model, requested, {}
