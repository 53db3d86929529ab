"""Structured channel pruning (torch-pruning's dependency-graph MetaPruner) + fine-tuning.

Whole channels are removed from convolutions/linears together with everything that depends on
them (BatchNorm, the next layer's inputs, residual partners), so the pruned model is a smaller dense
model that exports and runs on every backend. Importance is the L1 or L2 norm of each channel group
(torch-pruning's MagnitudeImportance). The classifier (the layer producing the model output) is never
pruned. Fine-tuning afterwards uses logit KD with the unpruned model as teacher by default
(`edgecompile.passes.module.distillation`), plain cross-entropy with `distill = false`, or a user callable
(`finetune=callable(module, teacher, dataset)` in the Python API).

The pass records params, FLOPs, size, latency (torch, batch 1) and the task metric before pruning,
after each pruning step and after fine-tuning; the report renders them from `notes["pruning"]`.
"""
from __future__ import annotations

import copy
import dataclasses

from edgecompile.compiler.config import PruneSection
from edgecompile.errors import ConfigError, PassError
from edgecompile.passes.module.stats import Probe, example_input
from edgecompile.passes.base import ModulePass, ModuleResult, PassContext


_TARGET_KEYS = {"params": "params", "flops": "flops", "latency": "latency_ms"}


class Prune(ModulePass):
    name = "prune"

    def __init__(self, options: PruneSection | None = None, **overrides):
        base = options or PruneSection()
        self.cfg = dataclasses.replace(base, **overrides) if overrides else base

    def options(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # -- the pass ---------------------------------------------------------------------------
    def __call__(self, module, ctx: PassContext) -> ModuleResult:
        import torch

        cfg = self.cfg
        if cfg.ratio <= 0:
            return ModuleResult(module, False, {"skipped": "ratio is 0"})
        module.eval()
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        example = example_input(ctx)
        teacher = copy.deepcopy(module).eval()
        ignored = self._ignored(module, example)
        probe = Probe(ctx, teacher, example)
        rows = [probe.row("unpruned", module, ratio=0.0)]

        pruner = self._pruner(module, example, ignored, ctx)
        steps = pruner.iterative_steps
        finetune_each = (
            self._per_step_epochs(steps) if cfg.target is None else [0] * (steps - 1) + [cfg.finetune_epochs]
        )
        notes: dict = {}
        ratio = 0.0
        key = _TARGET_KEYS.get(cfg.target)
        for i in range(steps):
            try:
                pruner.step()
            except Exception as exc:
                raise PassError(
                    f"pruning {ctx.source.name!r} failed at step {i + 1}: {exc.__class__.__name__}: {exc}",
                    hint="add the offending layers to [passes.prune] ignored_layers, or lower the ratio",
                ) from exc
            _refreeze(module, frozen)        # pruning replaces parameters; keep the user's frozen ones frozen
            ratio = pruner.per_step_pruning_ratio[i + 1]
            row = probe.row(f"pruned step {i + 1}" if steps > 1 else "pruned", module, ratio=ratio)
            rows.append(row)
            if cfg.target is not None and row[key] <= cfg.target_ratio * rows[0][key]:
                notes["target"] = (f"{cfg.target} {row[key] / rows[0][key]:.2f}x <= "
                                   f"{cfg.target_ratio}x reached at channel ratio {ratio:.3f}")
                finetune_each = [cfg.finetune_epochs]
                break
            if cfg.target is None and finetune_each[i] and i < steps - 1:
                self._finetune(module, teacher, ctx, finetune_each[i], cfg.distill, notes)
                rows.append(probe.row(f"fine-tuned step {i + 1}", module, ratio=ratio))
        else:
            if cfg.target is not None:
                notes["target"] = (f"{cfg.target} target {cfg.target_ratio}x NOT reached: "
                                   f"{rows[-1][key] / rows[0][key]:.2f}x at the maximum ratio {cfg.ratio}")
                if ctx.progress is not None:
                    ctx.progress.warn(f"prune: {notes['target']} (raise [passes.prune] ratio)")
        pruned_copy = copy.deepcopy(module) if cfg.compare else None
        epochs = finetune_each[-1] if finetune_each else 0
        if self._finetune(module, teacher, ctx, epochs, cfg.distill, notes):
            rows.append(probe.row(f"fine-tuned ({notes['finetune']})", module, ratio=ratio))
        if pruned_copy is not None and epochs:
            other = not cfg.distill
            if self._finetune(pruned_copy, teacher, ctx, cfg.finetune_epochs, other, {}, comparing=True):
                rows.append(probe.row(f"comparison: fine-tuned {'with' if other else 'without'} KD",
                                      pruned_copy, ratio=ratio, comparison=True))
        module.eval()
        with torch.no_grad():
            module(example)       # the pruned module still runs end to end
        final = next(r for r in reversed(rows) if not r.get("comparison"))
        base = rows[0]
        notes.update({
            "channels removed": f"{ratio:.0%} per layer" + (" (global)" if cfg.global_pruning else ""),
            "params": f"{base['params']} -> {final['params']} ({final['params'] / base['params']:.2f}x)",
            "flops": f"{base['flops']:.3g} -> {final['flops']:.3g} ({final['flops'] / base['flops']:.2f}x)",
        })
        if base.get("metric") is not None:
            notes[base["metric_name"]] = f"{base['metric']:.4f} -> {final['metric']:.4f}"
        notes["pruning"] = {"importance": cfg.importance, "global": cfg.global_pruning, "ratio": ratio,
                            "ignored_layers": sorted(ignored_names(module, ignored)), "steps": rows,
                            "metric": base.get("metric_name"), "latency_batch": 1,
                            "params_ratio": final["params"] / base["params"],
                            "flops_ratio": final["flops"] / base["flops"]}
        return ModuleResult(module, True, notes)

    # -- pieces -----------------------------------------------------------------------------
    def _ignored(self, module, example) -> list:
        modules = dict(module.named_modules())
        ignored = []
        for name in self.cfg.ignored_layers:
            if name not in modules or not name:
                prunable = [n for n, m in modules.items() if n and _is_prunable(m)]
                raise ConfigError(f"[passes.prune] ignored_layers: the model has no layer named {name!r}",
                                  hint=f"valid names include: {', '.join(prunable[:8])}"
                                       f"{', ...' if len(prunable) > 8 else ''}")
            ignored.append(modules[name])
        head = _output_layer(module, example)
        if head is not None and all(head is not m for m in ignored):
            ignored.append(head)
        return ignored

    def _pruner(self, module, example, ignored, ctx):
        import torch
        import torch_pruning as tp

        cfg = self.cfg
        steps = cfg.iterative_steps if cfg.target is None else max(cfg.iterative_steps, 20)
        imp = tp.importance.MagnitudeImportance(p=1 if cfg.importance == "l1" else 2)
        hint = ("the model's forward must be traceable by autograd on one example input (no torch.no_grad, "
                ".detach() or numpy round trips); add untraceable layers to [passes.prune] ignored_layers, "
                "or build without --prune")
        frozen = [p for p in module.parameters() if not p.requires_grad]
        try:
            for p in frozen:                  # the trace follows autograd: frozen weights would hide layers
                p.requires_grad_(True)        # (re-frozen by name after each step: see _refreeze)
            with torch.enable_grad():
                pruner = tp.pruner.MetaPruner(module, example, importance=imp, pruning_ratio=cfg.ratio,
                                              global_pruning=cfg.global_pruning, iterative_steps=steps,
                                              ignored_layers=ignored, round_to=cfg.round_to)
        except Exception as exc:
            raise PassError(f"cannot prune {ctx.source.name!r}: torch-pruning could not trace the model "
                            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                            hint=hint) from exc
        finally:
            for p in frozen:
                p.requires_grad_(False)
        # torch-pruning does not complain about a broken autograd graph: it silently prunes only what it
        # saw. A prunable layer that is missing from the graph, or whose output leads nowhere, means the
        # trace was cut; pruning around it would be wrong or a silent no-op.
        nodes = pruner.DG.module2node
        ignored_ids = {id(m) for m in ignored}
        cut = [name for name, m in module.named_modules()
               if _is_prunable(m) and id(m) not in ignored_ids and (m not in nodes or not nodes[m].outputs)]
        if cut:
            raise PassError(f"cannot prune {ctx.source.name!r}: torch-pruning could not trace layer(s) "
                            f"{', '.join(cut[:5])}{', ...' if len(cut) > 5 else ''} through the model's forward",
                            hint=hint)
        return pruner

    def _per_step_epochs(self, steps: int) -> list[int]:
        total = self.cfg.finetune_epochs
        if steps == 1 or total == 0:
            return [total] * steps
        each = max(1, total // steps)
        return [each] * (steps - 1) + [max(1, total - each * (steps - 1))]

    def _finetune(self, module, teacher, ctx: PassContext, epochs: int, use_kd: bool, notes: dict,
                  comparing: bool = False) -> bool:
        cfg = self.cfg
        user = (ctx.options or {}).get("finetune")
        if user is not None and not comparing:
            if not callable(user):
                raise ConfigError("finetune= must be a callable(module, teacher, dataset)")
            out = user(module, teacher, ctx.train)
            if out is not None and out is not module:
                module.load_state_dict(out.state_dict())
            notes["finetune"] = f"user callable {getattr(user, '__name__', type(user).__name__)}"
            module.eval()
            return True
        if not epochs:
            return False
        if ctx.train is None:
            notes["finetune"] = "skipped: the model has no training split"
            return False
        if use_kd:
            from edgecompile.passes.module.distillation import distill

            distill(teacher, module, ctx.train, epochs=epochs, temperature=cfg.temperature, alpha=cfg.alpha,
                    features=cfg.distill_features or None, lr=cfg.finetune_lr)
            notes["finetune"] = f"{epochs} epochs, KD (T={cfg.temperature:g}, alpha={cfg.alpha:g})"
            return True
        if ctx.train.labels is None:
            notes["finetune"] = "skipped: the training split has no labels (enable distillation)"
            if ctx.progress is not None and not comparing:
                ctx.progress.warn("prune: not fine-tuned: the training split has no labels; use distillation")
            return False
        from edgecompile.compiler.training import deterministic, train_classifier

        with deterministic(0):
            train_classifier(module, ctx.train, epochs=epochs, lr=cfg.finetune_lr)
        notes["finetune"] = f"{epochs} epochs, cross-entropy"
        return True


def _is_prunable(m) -> bool:
    from torch import nn

    return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))


def _output_layer(module, example):
    """The last conv/linear executed in forward: the classifier head, kept at full width."""
    import torch

    last = []
    hooks = [m.register_forward_hook(lambda mod, i, o: last.append(mod))
             for m in module.modules() if _is_prunable(m)]
    try:
        with torch.no_grad():
            module(example)
    except Exception as exc:
        raise PassError(f"cannot prune: the model fails on an example input ({exc.__class__.__name__}: {exc})",
                        hint="check the model's input spec") from exc
    finally:
        for h in hooks:
            h.remove()
    return last[-1] if last else None


def _refreeze(module, names: set[str]) -> None:
    for n, p in module.named_parameters():
        if n in names:
            p.requires_grad_(False)


def ignored_names(module, ignored) -> list[str]:
    ids = {id(m) for m in ignored}
    return [n for n, m in module.named_modules() if id(m) in ids]


__all__ = ["Prune"]
