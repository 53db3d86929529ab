"""The prune module pass on the real digits model (no build): structure, options and bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import torch  # noqa: E402
import torch_pruning  # noqa: E402,F401

from edgecompile.compiler.config import Config  # noqa: E402
from edgecompile.errors import ConfigError, PassError  # noqa: E402
from edgecompile.passes.module.prune import Prune  # noqa: E402
from edgecompile.passes.base import PassContext  # noqa: E402


@pytest.fixture(scope="module")
def teacher(digits_source):
    return digits_source.module()


def _ctx(source, train=True, evaluation=True, **options):
    return PassContext(config=None, profile=None, backend="ort", source=source,
                       train=source.dataset("train") if train else None,
                       evaluation=source.dataset("test").take(120) if evaluation else None, options=options)


def _convs(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_half_the_channels_go_and_the_classifier_stays(digits_source, teacher):
    res = Prune(ratio=0.5, finetune_epochs=0)(copy.deepcopy(teacher), _ctx(digits_source, evaluation=True))
    m = res.module
    assert res.modified
    assert [c.out_channels for c in _convs(m)] == [16, 16, 32]
    assert (m.classifier.in_features, m.classifier.out_features) == (32, 10)
    x = torch.from_numpy(digits_source.dataset("test").inputs["input"][:5])
    assert m(x).shape == (5, 10)
    pr = res.notes["pruning"]
    assert pr["ignored_layers"] == ["classifier"]
    assert [r["stage"] for r in pr["steps"]] == ["unpruned", "pruned"]
    base, pruned = pr["steps"]
    assert pruned["params"] == sum(p.numel() for p in m.parameters())
    assert pr["params_ratio"] < 0.3 and pr["flops_ratio"] < 0.3
    assert pruned["size_bytes"] < base["size_bytes"]
    assert base["metric_name"] == "top1" and base["metric"] > 0.95
    # the unpruned teacher is untouched
    assert [c.out_channels for c in _convs(teacher)] == [32, 32, 64]


def test_l2_global_iterative_with_finetune_between_steps(digits_source, teacher):
    res = Prune(ratio=0.5, importance="l2", global_pruning=True, iterative_steps=2, finetune_epochs=2,
                distill=False)(copy.deepcopy(teacher), _ctx(digits_source))
    stages = [r["stage"] for r in res.notes["pruning"]["steps"]]
    assert stages[:4] == ["unpruned", "pruned step 1", "fine-tuned step 1", "pruned step 2"]
    assert stages[-1].startswith("fine-tuned (1 epochs, cross-entropy)")
    params = [r["params"] for r in res.notes["pruning"]["steps"]]
    assert params[0] > params[1] > params[3]
    assert res.notes["pruning"]["global"] is True


def test_flops_target_stops_when_reached(digits_source, teacher):
    res = Prune(ratio=0.9, target="flops", target_ratio=0.5, finetune_epochs=0)(copy.deepcopy(teacher),
                                                                                _ctx(digits_source, evaluation=False))
    pr = res.notes["pruning"]
    assert pr["flops_ratio"] <= 0.5
    assert pr["ratio"] < 0.9                         # stopped before the cap
    assert pr["flops_ratio"] > 0.3                   # and not far past the target
    assert "reached" in res.notes["target"]


def test_latency_target_is_measured_and_reported(digits_source, teacher):
    # timings are noisy: only check that the loop runs on measured latency and says what it found
    res = Prune(ratio=0.3, target="latency", target_ratio=0.5, finetune_epochs=0)(
        copy.deepcopy(teacher), _ctx(digits_source, evaluation=False))
    steps = res.notes["pruning"]["steps"]
    assert all(r["latency_ms"] > 0 for r in steps) and res.notes["pruning"]["ratio"] <= 0.3
    assert "latency" in res.notes["target"]


def test_ignored_layer_keeps_its_width(digits_source, teacher):
    res = Prune(ratio=0.5, finetune_epochs=0, ignored_layers=["features.0.0"])(
        copy.deepcopy(teacher), _ctx(digits_source, evaluation=False))
    assert _convs(res.module)[0].out_channels == 32
    assert res.notes["pruning"]["ignored_layers"] == ["classifier", "features.0.0"]


def test_frozen_weights_and_no_grad_context_still_prune(digits_source, teacher):
    m = copy.deepcopy(teacher)
    for p in m.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        res = Prune(ratio=0.5, finetune_epochs=0)(m, _ctx(digits_source, evaluation=False))
    assert [c.out_channels for c in _convs(res.module)] == [16, 16, 32]
    assert not any(p.requires_grad for p in res.module.parameters())


def test_unknown_ignored_layer_names_it_and_lists_valid_ones(digits_source, teacher):
    with pytest.raises(ConfigError) as err:
        Prune(ratio=0.5, ignored_layers=["features.9"])(copy.deepcopy(teacher), _ctx(digits_source))
    assert "'features.9'" in err.value.message
    assert "features.0.0" in err.value.hint and err.value.exit_code == 2


class _CutGraph(torch.nn.Module):
    """A forward that leaves autograd (numpy round trip): torch-pruning cannot see through it."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.from_numpy(self.conv1(x).detach().numpy().copy())
        return self.fc(self.conv2(y).mean((2, 3)))


def test_untraceable_model_is_a_pass_error(digits_source):
    with pytest.raises(PassError) as err:
        Prune(ratio=0.5, finetune_epochs=0)(_CutGraph().eval(), _ctx(digits_source, evaluation=False))
    assert "could not trace" in err.value.message and "conv1" in err.value.message


def test_user_finetune_callable_gets_module_teacher_and_data(digits_source, teacher):
    seen = {}

    def my_step(module, teach, data):
        seen.update(widths=[c.out_channels for c in _convs(module)], teacher=[c.out_channels for c in _convs(teach)],
                    n=len(data))

    res = Prune(ratio=0.5, finetune_epochs=7)(copy.deepcopy(teacher), _ctx(digits_source, finetune=my_step))
    assert seen == {"widths": [16, 16, 32], "teacher": [32, 32, 64], "n": len(digits_source.dataset("train"))}
    assert res.notes["finetune"] == "user callable my_step"


def test_unlabelled_data_without_distillation_is_not_finetuned(digits_source, teacher):
    ctx = _ctx(digits_source, evaluation=False)
    ctx.train = type(ctx.train)("digits:train-unlabelled", ctx.train.inputs, None)
    res = Prune(ratio=0.5, finetune_epochs=1, distill=False)(copy.deepcopy(teacher), ctx)
    assert "no labels" in res.notes["finetune"]
    assert [r["stage"] for r in res.notes["pruning"]["steps"]] == ["unpruned", "pruned"]


@pytest.mark.parametrize("key,value,word", [
    ("ratio", 1.0, "[0, 1)"), ("ratio", -0.1, "[0, 1)"), ("iterative_steps", 0, ">= 1"),
    ("target", "flops", "go together"), ("target_ratio", 0.5, "go together"), ("alpha", 1.5, "[0, 1]"),
    ("importance", "l3", "invalid value"),
])
def test_bad_prune_config_is_a_config_error(key, value, word):
    with pytest.raises(ConfigError) as err:
        Config().with_overrides({f"passes.prune.{key}": value})
    assert word in str(err.value) and err.value.exit_code == 2


def test_prune_numbers_are_deterministic(digits_source, teacher):
    runs = [Prune(ratio=0.5, finetune_epochs=1)(copy.deepcopy(teacher), _ctx(digits_source)).module
            for _ in range(2)]
    a, b = (np.concatenate([p.detach().numpy().ravel() for p in m.parameters()]) for m in runs)
    assert np.array_equal(a, b)
