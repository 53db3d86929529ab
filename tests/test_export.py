import copy

import pytest
import torch

from edgecompile.errors import ExportError
from edgecompile.compiler.export import check_parity, export_torch


def test_export_has_dynamic_batch_and_named_io(digits_source):
    ds = digits_source.dataset("test")
    model = export_torch(digits_source.module(), digits_source, ds)
    assert [v.name for v in model.graph.inputs] == ["input"]
    assert [v.name for v in model.graph.outputs] == ["logits"]
    assert str(model.graph.inputs[0].shape[0]) == "batch"
    rep = check_parity(model, digits_source.module(), ds, ["logits"], classifier=True)
    assert rep["outputs"]["logits"]["agreement"] == 1.0 and rep["outputs"]["logits"]["cosine"] > 0.99999


def test_parity_mismatch_is_an_export_error_naming_the_output(digits_source):
    ds = digits_source.dataset("test")
    model = export_torch(digits_source.module(), digits_source, ds)
    other = copy.deepcopy(digits_source.module())
    with torch.no_grad():
        other.classifier.weight.mul_(-1.0)            # a different model than the one exported
    with pytest.raises(ExportError, match="disagrees with torch on output 'logits'"):
        check_parity(model, other, ds, ["logits"], classifier=True)
