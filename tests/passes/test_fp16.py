"""FP16 pass (issue 7): float16 weights/activations, FP32 islands, I/O types; --precision fp16 on ORT."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def fp32_proto(digits_bundle):
    return onnx.load(str(digits_bundle.path / "model.onnx"))


@pytest.fixture(scope="module")
def feeds(digits_source):
    return [{"input": digits_source.dataset("test").inputs["input"]}]


def _convert(proto, **section):
    import onnx_ir as ir

    from edgecompile.compiler.config import Fp16Section
    from edgecompile.passes.fp16 import Float16

    res = Float16(Fp16Section(**section))(ir.from_proto(proto))
    out = ir.to_proto(res.model)
    onnx.checker.check_model(out, full_check=True)          # types are consistent after the rewrite
    return res, out


def _run(proto, feeds):
    from edgecompile.targets.ort.build import ort_outputs

    return ort_outputs(proto.SerializeToString(), feeds)[0]


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_default_conversion_halves_size_keeps_fp32_io_and_blocked_ops(fp32_proto, feeds, digits_source):
    res, out = _convert(fp32_proto)
    assert res.modified and res.notes["io_types"] == "float32" and res.notes["fp32_nodes"] == ["ReduceMean"]
    assert 0.45 < out.ByteSize() / fp32_proto.ByteSize() < 0.56
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in out.graph.initializer
               if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    assert [i.type.tensor_type.elem_type for i in out.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [onnx.TensorProto.FLOAT]
    assert [o.name for o in out.graph.output] == [o.name for o in fp32_proto.graph.output]
    # the blocked ReduceMean reads and writes float32 (Casts around it)
    producers = {o: n for n in out.graph.node for o in n.output}
    rm = next(n for n in out.graph.node if n.op_type == "ReduceMean")
    assert producers[rm.input[0]].op_type == "Cast"
    assert onnx.helper.get_attribute_value(producers[rm.input[0]].attribute[0]) == onnx.TensorProto.FLOAT
    a, b = _run(out, feeds), _run(fp32_proto, feeds)
    assert a.dtype == np.float32 and _cosine(a, b) > 0.9999
    labels = digits_source.dataset("test").labels
    assert abs(np.mean(a.argmax(1) == labels) - np.mean(b.argmax(1) == labels)) <= 0.002


def test_float16_io_and_an_empty_block_list(fp32_proto, feeds):
    res, out = _convert(fp32_proto, io_types="float16", block_list=[])
    assert res.notes["fp32_islands"] == 0 and res.notes["boundary_casts"] == 0
    assert not any(n.op_type == "Cast" for n in out.graph.node)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    y = _run(out, [{"input": feeds[0]["input"].astype(np.float16)}])
    assert y.dtype == np.float16 and _cosine(y, _run(fp32_proto, feeds)) > 0.999


def test_adjacent_blocked_ops_share_one_fp32_island(fp32_proto, feeds):
    res, out = _convert(fp32_proto, block_list=["Conv", "Relu"])
    # Conv -> Relu -> Conv chains stay float32 without Cast(fp16)->Cast(fp32) round trips
    assert res.notes["cast_pairs_removed"] > 0
    producers = {o: n for n in out.graph.node for o in n.output}
    for n in out.graph.node:
        if n.op_type == "Cast" and n.input[0] in producers:
            p = producers[n.input[0]]
            assert not (p.op_type == "Cast" and p.attribute[0].i != n.attribute[0].i)
    assert _cosine(_run(out, feeds), _run(fp32_proto, feeds)) > 0.99999


def test_out_of_range_weights_are_clipped_and_counted():
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1e6, 1.0], [-2.0, 0.5]], np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    res, out = _convert(proto)
    assert res.notes["clipped_weights"] == 1 and res.notes["fp32_nodes"] == ["Softmax"]
    y = _run(out, [{"x": np.array([[1e-3, 1.0]], np.float32)}])
    assert np.isfinite(y).all() and y.sum() == pytest.approx(1.0, abs=1e-3)


def test_fp16_section_validation():
    from edgecompile.compiler.config import Config
    from edgecompile.errors import ConfigError

    with pytest.raises(ConfigError, match="io_types"):
        Config.from_dict({"passes": {"fp16": {"io_types": "int8"}}})
    with pytest.raises(ConfigError, match="block_list"):
        Config.from_dict({"passes": {"fp16": {"block_list": "Softmax"}}})
    a = Config().with_overrides({"model.source": "models/digits", "build.precision": "fp16"})
    from edgecompile.compiler.pipeline import make_plan

    p1 = make_plan(a, output=None, data=None, options={})
    p2 = make_plan(a.with_overrides({"passes.fp16.io_types": "float16"}), output=None, data=None, options={})
    assert p1.bundle_id() != p2.bundle_id()                  # FP16 options are part of the cache key


def test_cli_fp16_bundle_is_valid_and_reports_delta_and_size(tmp_path):
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.runtime import load

    out = tmp_path / "digits-fp16"
    rc, _, err = run_cli(
        "build", "models/digits", "--target", "cpu", "--backend", "ort", "--precision", "fp16", "-o", out, cwd=REPO
    )
    assert rc == 0, err
    bundle = Bundle.open(out)
    assert bundle.manifest["precision"] == "fp16"
    report = json.loads((out / "report.json").read_text())
    h = report["precision_notes"]["fp16"]
    assert 0.45 < h["size_ratio"] < 0.56 and abs(report["accuracy"]["delta"]) <= 0.002
    assert h["latency"]["fp32_ms"] > 0 and h["latency"]["fp16_ms"] > 0
    md = (out / "report.md").read_text()
    assert "## FP16" in md and "| size fp16 / fp32 |" in md and "| speedup vs fp32 |" in md
    with load(out) as runner:
        y = runner.run({"input": np.zeros((2, 1, 8, 8), np.float32)})["logits"]
        assert y.dtype == np.float32 and y.shape == (2, 10)
