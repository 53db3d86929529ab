"""Teacher -> student knowledge distillation: logit KD with a temperature, optional feature KD.

Three ways in:
* `distill(teacher, student, dataset, epochs=...)` trains a student (used by the prune pass's
  fine-tuning and by `edgecompile distill`);
* `Distiller(teacher, student, ...)` is an `nn.Module` whose `.loss(x, labels)` drops into any
  training loop (its `.parameters()` are the student's plus the feature projections);
* `kd_loss(student_logits, teacher_logits, ...)` is the bare loss.

Logit KD (Hinton et al.): alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).
Without labels the loss is pure KD. Feature KD (as in FitNets/TinyBERT) adds the MSE between named
intermediate activations, through a learned 1x1 projection when the widths differ.

Needs torch (build time only).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from edgecompile.errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 4.0,
            alpha: float = 0.7, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton's distillation loss. `alpha` weighs the soft (teacher) term; with no labels it is 1."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)
    if labels is None:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def _pairs(features) -> list[tuple[str, str]]:
    """Feature pairs as (student layer, teacher layer). Accepts names (same in both), "s:t" strings,
    (s, t) tuples or a {student: teacher} mapping."""
    if not features:
        return []
    if isinstance(features, Mapping):
        return [(str(s), str(t)) for s, t in features.items()]
    pairs = []
    for item in features:
        if isinstance(item, str):
            s, _, t = item.partition(":")
            pairs.append((s, t or s))
        else:
            s, t = item
            pairs.append((str(s), str(t)))
    return pairs


def _module_by_name(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        valid = [n for n in modules if n][:8]
        raise ConfigError(f"{role} has no layer named {name!r}",
                          hint=f"layer names look like: {', '.join(valid)}{', ...' if len(modules) > 9 else ''}")
    return modules[name]


def _projection(s_shape: torch.Size, t_shape: torch.Size) -> nn.Module:
    """Maps a student activation to the teacher's width: 1x1 conv for NCHW, linear for [N, C]."""
    s_c, t_c = s_shape[1], t_shape[1]
    if len(s_shape) == 4:
        return nn.Conv2d(s_c, t_c, 1, bias=False) if s_c != t_c else nn.Identity()
    return nn.Linear(s_c, t_c, bias=False) if s_c != t_c else nn.Identity()


class Distiller(nn.Module):
    """Trains `student` against a frozen `teacher`.

    `features`: intermediate layers to match (see `_pairs`); needs `example_input` (one batch) to
    size the projections. The teacher stays in eval mode and is never updated.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, temperature: float = 4.0, alpha: float = 0.7,
                 features: Sequence | Mapping | None = None, feature_weight: float = 1.0,
                 example_input: torch.Tensor | None = None):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.student = student
        self.temperature, self.alpha, self.feature_weight = float(temperature), float(alpha), float(feature_weight)
        # a list: not a submodule, so not in parameters()/state_dict(); it runs under no_grad in loss()
        self._teacher = [teacher.eval()]
        self.pairs = _pairs(features)
        self.projections = nn.ModuleList()
        self._acts: dict[str, torch.Tensor] = {}
        self._hooks = []
        for i, (s_name, t_name) in enumerate(self.pairs):
            self._hooks.append(
                _module_by_name(student, s_name, "the student").register_forward_hook(self._saver(f"s{i}"))
            )
            self._hooks.append(
                _module_by_name(teacher, t_name, "the teacher").register_forward_hook(self._saver(f"t{i}"))
            )
        if self.pairs:
            if example_input is None:
                raise ConfigError("feature distillation needs example_input to size the projections",
                                  hint="pass example_input=<one input batch>")
            with torch.no_grad():
                was = student.training
                student.eval()
                student(example_input)
                teacher(example_input)
                student.train(was)
            for i in range(len(self.pairs)):
                s, t = self._acts[f"s{i}"], self._acts[f"t{i}"]
                if s.dim() != t.dim() or s.dim() not in (2, 4):
                    raise ConfigError(f"cannot match feature {self.pairs[i][0]!r} {tuple(s.shape)} to teacher "
                                      f"{self.pairs[i][1]!r} {tuple(t.shape)}",
                                      hint="pick layers with [N, C] or [N, C, H, W] outputs of the same rank")
                self.projections.append(_projection(s.shape, t.shape))
            self._acts.clear()

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _saver(self, key: str):
        def hook(_module, _inputs, output):
            self._acts[key] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation loss of one batch (labels optional)."""
        self._acts.clear()
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        total = kd_loss(s_logits, t_logits, temperature=self.temperature, alpha=self.alpha, labels=labels)
        for i, proj in enumerate(self.projections):
            s, t = proj(self._acts[f"s{i}"]), self._acts[f"t{i}"].detach()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            total = total + self.feature_weight * F.mse_loss(s, t)
        self._acts.clear()
        return total

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def distill(teacher: nn.Module, student: nn.Module, dataset, *, epochs: int, temperature: float = 4.0,
            alpha: float = 0.7, features=None, feature_weight: float = 1.0, lr: float = 1e-3,
            batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Train `student` on `dataset` (an edgecompile Dataset; labels optional) against `teacher`.
    Deterministic for a given seed; returns the student in eval mode."""
    from edgecompile.compiler.training import deterministic, train_classifier

    input_name = next(iter(dataset.inputs))
    example = torch.from_numpy(dataset.inputs[input_name][:min(len(dataset), batch_size)])
    with deterministic(seed):
        d = Distiller(teacher, student, temperature=temperature, alpha=alpha, features=features,
                      feature_weight=feature_weight, example_input=example)
        labelled = dataset.labels is not None

        def loss_fn(module, x, y):
            return module.loss(x, y if labelled else None)

        try:
            train_classifier(d, _with_dummy_labels(dataset), epochs=epochs, lr=lr, batch_size=batch_size,
                             seed=seed, loss_fn=loss_fn, input_name=input_name)
        finally:
            d.remove_hooks()
    return student.eval()


def _with_dummy_labels(ds):
    """train_classifier's loader needs labels; unlabelled data gets zeros that the KD loss ignores."""
    if ds.labels is not None:
        return ds
    import numpy as np

    from edgecompile.data import Dataset

    return Dataset(ds.identity, ds.inputs, np.zeros(len(ds), dtype=np.int64), ds.synthetic)
