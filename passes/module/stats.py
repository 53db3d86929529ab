"""Measurements of a torch module for module passes: params, FLOPs, size, batch-1 latency and the
task metric against a reference module (the unpruned model, or the teacher). Needs torch."""
from __future__ import annotations

import time


class Probe:
    """Params, FLOPs, size, batch-1 torch latency and the task metric of a module."""

    def __init__(self, ctx, teacher, example):
        self.example = example[:1]
        self.ds = ctx.evaluation.take(512) if ctx.evaluation is not None else None
        self.metric = None
        if self.ds is not None:
            from edgecompile.verify.evaluate import choose_metric
            from edgecompile.compiler.training import predict

            self.metric = choose_metric(ctx.source.metric, self.ds, True)
            self.reference = predict(teacher, self.ds)[0]

    def row(self, stage: str, module, *, ratio: float | None = None, comparison: bool = False) -> dict:
        import torch_pruning as tp

        macs, params = tp.utils.count_ops_and_params(module, self.example)
        size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        row = {
            "stage": stage,
            **({} if ratio is None else {"ratio": ratio}),
            "params": int(params),
            "flops": int(2 * macs),
            "size_bytes": int(size),
            "latency_ms": _torch_latency_ms(module, self.example),
        }
        if comparison:
            row["comparison"] = True
        if self.metric is not None:
            from edgecompile.verify.evaluate import compare
            from edgecompile.compiler.training import predict

            ev = compare(predict(module, self.ds)[0], self.reference, self.ds, self.metric, "unpruned")
            row.update(metric=ev.candidate, metric_name=ev.metric)
        return row


def _torch_latency_ms(module, x, budget_s: float = 0.3, max_runs: int = 50) -> float:
    """Best wall time of one batch-1 forward in torch on one thread (after a warm-up): a rough guide
    to compare the steps of a pass, and the least noisy one on a shared machine (multi-threaded torch
    spins badly when other processes hold the cores). The bundle's latency is measured through its
    Runner as usual."""
    import torch

    module.eval()
    threads = torch.get_num_threads()
    times = []
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            module(x)
            start = time.perf_counter()
            while len(times) < max_runs and (len(times) < 5 or time.perf_counter() - start < budget_s):
                t0 = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * min(times)


def example_input(ctx):
    import numpy as np
    import torch

    for ds in (ctx.train, ctx.calibration, ctx.evaluation):
        if ds is not None and len(ds):
            return torch.from_numpy(np.ascontiguousarray(next(iter(ds.inputs.values()))[:2]))
    spec = ctx.source.inputs[0]
    shape = [2 if not isinstance(d, int) else d for d in spec.shape]
    return torch.zeros(shape, dtype=getattr(torch, spec.dtype))
