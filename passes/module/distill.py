"""Distillation as a module pass: train the model being built (the student) against a teacher model.

`edgecompile distill --teacher A --student B` (or `[passes.distill] teacher = "A"`) builds B after
training it with logit KD (+ optional feature KD) from A on B's training split (labels optional:
without them the loss is pure KD). The teacher must take the same inputs and produce logits of the
same width. The notes record params/FLOPs/size/latency/metric of teacher, student before and
student after (and, with `compare`, the student trained as long with plain cross-entropy).
"""
from __future__ import annotations

import copy
import dataclasses

from edgecompile.compiler.config import DistillSection
from edgecompile.errors import ConfigError, DataError
from edgecompile.passes.module.stats import Probe, example_input
from edgecompile.passes.base import ModulePass, ModuleResult, PassContext


class Distill(ModulePass):
    name = "distill"

    def __init__(self, options: DistillSection | None = None, *, teacher_module=None, **overrides):
        base = options or DistillSection()
        self.cfg = dataclasses.replace(base, **overrides) if overrides else base
        self.teacher_module = teacher_module      # Python API: an nn.Module instead of a model spec

    def options(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def _teacher(self, ctx: PassContext):
        if self.teacher_module is not None:
            return self.teacher_module.eval(), "teacher module"
        from edgecompile.source import resolve_source

        src = resolve_source(self.cfg.teacher)
        if src.kind != "torch":
            raise ConfigError(f"teacher {self.cfg.teacher!r} is not a torch model package",
                              hint="distillation needs a torch teacher (a models/<name> package or built-in name)")
        want = [(s.name, tuple(s.shape[1:])) for s in ctx.source.inputs]
        have = [(s.name, tuple(s.shape[1:])) for s in src.inputs]
        if want != have:
            raise ConfigError(f"teacher {src.name!r} takes inputs {have}, the student {ctx.source.name!r} takes {want}",
                              hint="teacher and student must share the input contract")
        return src.module().eval(), src.name

    def __call__(self, module, ctx: PassContext) -> ModuleResult:
        import torch

        from edgecompile.passes.module.distillation import distill

        cfg = self.cfg
        if ctx.train is None:
            raise DataError(f"cannot distill into {ctx.source.name!r}: the model has no training split",
                            hint="distillation trains the student on the model's bound training data")
        teacher, teacher_name = self._teacher(ctx)
        example = example_input(ctx)
        with torch.no_grad():
            t_out, s_out = teacher(example), module(example)
        if t_out.shape[1:] != s_out.shape[1:]:
            raise ConfigError(
                f"teacher output {tuple(t_out.shape[1:])} and student output {tuple(s_out.shape[1:])} differ",
                hint="logit distillation needs the same number of classes",
            )
        probe = Probe(ctx, teacher, example)
        rows = [probe.row(f"teacher ({teacher_name})", teacher), probe.row("student before", module)]
        plain = copy.deepcopy(module) if cfg.compare else None
        distill(teacher, module, ctx.train, epochs=cfg.epochs, temperature=cfg.temperature, alpha=cfg.alpha,
                features=cfg.features or None, feature_weight=cfg.feature_weight, lr=cfg.lr)
        rows.append(probe.row(f"student after KD ({cfg.epochs} epochs)", module))
        if plain is not None:
            if ctx.train.labels is None:
                rows.append({"stage": "comparison skipped: no labels for plain training", "comparison": True})
            else:
                from edgecompile.compiler.training import deterministic, train_classifier

                with deterministic(0):
                    train_classifier(plain, ctx.train, epochs=cfg.epochs, lr=cfg.lr)
                rows.append(probe.row(f"comparison: student, plain cross-entropy ({cfg.epochs} epochs)", plain,
                                      comparison=True))
        notes = {"teacher": teacher_name, "epochs": cfg.epochs, "temperature": cfg.temperature, "alpha": cfg.alpha}
        if cfg.features:
            notes["features"] = ", ".join(cfg.features)
        if rows[0].get("metric") is not None:
            notes[rows[0]["metric_name"]] = (f"teacher {rows[0]['metric']:.4f}; student {rows[1]['metric']:.4f} -> "
                                             f"{rows[2]['metric']:.4f}")
        notes["distillation"] = {"teacher": teacher_name, "metric": rows[0].get("metric_name"), "steps": rows,
                                 "temperature": cfg.temperature, "alpha": cfg.alpha, "features": list(cfg.features)}
        return ModuleResult(module.eval(), True, notes)
