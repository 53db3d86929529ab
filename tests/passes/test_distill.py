"""Distillation: the KD loss, the Distiller (feature KD with projections) and distill() on digits."""
from __future__ import annotations

import copy

import pytest

import torch  # noqa: E402

from edgecompile.data import Dataset  # noqa: E402
from edgecompile.passes.module.distillation import Distiller, distill, kd_loss  # noqa: E402
from edgecompile.errors import ConfigError  # noqa: E402
from edgecompile.compiler.training import predict  # noqa: E402


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 10, generator=g)
    assert kd_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.randn(8, 10, generator=g), t).item() > 0.01


def test_kd_loss_alpha_weighs_soft_and_hard_terms():
    g = torch.Generator().manual_seed(1)
    s, t, y = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g), torch.arange(8) % 10
    ce = torch.nn.functional.cross_entropy(s, y)
    assert kd_loss(s, t, alpha=0.0, labels=y).item() == pytest.approx(ce.item(), rel=1e-6)
    soft = kd_loss(s, t, temperature=2.0)
    mixed = kd_loss(s, t, temperature=2.0, alpha=0.25, labels=y)
    assert mixed.item() == pytest.approx(0.25 * soft.item() + 0.75 * ce.item(), rel=1e-5)


def _student():
    from edgecompile.models.digits.model import DigitsNet

    torch.manual_seed(3)
    return DigitsNet(width=8).eval()


def test_feature_kd_adds_a_projection_when_widths_differ(digits_source):
    teacher = digits_source.module()
    x = torch.from_numpy(digits_source.dataset("train").inputs["input"][:16])
    d = Distiller(teacher, _student(), features=["features.1:features.1", "features.4"], example_input=x)
    assert isinstance(d.projections[0], torch.nn.Conv2d)
    assert (d.projections[0].in_channels, d.projections[0].out_channels) == (8, 32)
    assert (d.projections[1].in_channels, d.projections[1].out_channels) == (16, 64)
    own = {id(p) for p in d.parameters()}
    assert not any(id(p) in own for p in teacher.parameters())          # the teacher is not trained
    assert all(p.requires_grad for p in teacher.parameters())           # ... nor modified
    teacher.zero_grad(set_to_none=True)
    loss = d.loss(x)
    loss.backward()
    assert d.projections[0].weight.grad is not None and d.student.classifier.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    d.train()
    assert d.student.training and not d.teacher.training                 # the teacher's BN stays frozen
    d.remove_hooks()


def test_unknown_feature_layer_is_a_config_error(digits_source):
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ConfigError) as err:
        Distiller(digits_source.module(), _student(), features=["features.7"], example_input=x)
    assert "features.7" in err.value.message and "features.0" in err.value.hint


def test_distill_without_labels_pulls_the_student_to_the_teacher(digits_source):
    teacher = digits_source.module()
    before_t = copy.deepcopy(teacher.state_dict())
    train = digits_source.dataset("train")
    unlabelled = Dataset("digits:train-unlabelled", train.inputs, None)
    test = digits_source.dataset("test")
    ref = predict(teacher, test)[0].argmax(1)
    student = _student()
    agree0 = (predict(student, test)[0].argmax(1) == ref).mean()
    distill(teacher, student, unlabelled, epochs=4, features=["features.4"], lr=1e-2)
    agree1 = (predict(student, test)[0].argmax(1) == ref).mean()
    assert agree0 < 0.3 and agree1 > 0.7
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert not student.training
