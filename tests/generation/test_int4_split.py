"""INT4 with GGUF Q4_1's grid on ORT's fast kernels (issue 23): the float-zero-point graph and the same graph
after the zero-point split (passes/zero_point_split.py) give the same logits and greedy tokens, on the tiny
random llama the generation tests use (a tiny GPT-2 exports its Conv1D layers as Gemm: only lm_head would
be a MatMulNBits)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import make_model_dir

PROMPTS = ["The quick brown fox", "Once upon a time", "def add(a, b):", "Numbers: 3 4 5", "Edge devices run"]


@pytest.fixture(scope="module")
def llama_fp32(tmp_path_factory):
    import edgecompile

    d = make_model_dir(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama", "llama")
    b = edgecompile.build(str(d), output=tmp_path_factory.mktemp("b") / "llama-fp32", precision="fp32")
    return b


@pytest.fixture(scope="module")
def graphs(llama_fp32, tmp_path_factory):
    from edgecompile.compiler.decoder import quantize
    from edgecompile.compiler.decoder_int4 import quantize_float_zp

    tmp = tmp_path_factory.mktemp("q")
    src = llama_fp32.path / "model.onnx"
    out = {"float_zp": tmp / "fz.onnx", "split0": tmp / "s0.onnx", "default": tmp / "d.onnx"}
    infos = {
        "float_zp": quantize_float_zp(src, out["float_zp"], 4, 16, [], split=False),
        "split0": quantize_float_zp(src, out["split0"], 4, 16, [], accuracy_level=0, correction_dtype="float32"),
        "default": quantize(src, out["default"], "weight-only", 4, 16, [], algorithm="minmax-float-zp"),
    }
    return out, infos


def _frontend(bundle, path):
    from edgecompile.compiler.decoder_build import frontend_for

    return frontend_for(path, bundle.artifact("tokenizer"), bundle.manifest["frontend"], 1)


def _zero_point_types(path) -> set[int]:
    g = onnx.load(str(path)).graph
    inits = {i.name: i.data_type for i in g.initializer}
    return {inits[n.input[3]] for n in g.node if n.op_type == "MatMulNBits"}


def test_split_graph_keeps_float_zero_point_logits_and_greedy_tokens(llama_fp32, graphs):
    paths, infos = graphs
    assert _zero_point_types(paths["float_zp"]) == {onnx.TensorProto.FLOAT}
    assert _zero_point_types(paths["split0"]) == {onnx.TensorProto.UINT8}
    n_mm = sum(n.op_type == "MatMulNBits" for n in onnx.load(str(paths["split0"])).graph.node)
    assert n_mm == 2 * 7 + 1 and infos["split0"]["correction"].endswith(f"{n_mm} MatMulNBits")
    fz, s0 = _frontend(llama_fp32, paths["float_zp"]), _frontend(llama_fp32, paths["split0"])
    for p in PROMPTS:
        ids = fz.encode_prompt(p)
        a, b = fz.logits(ids), s0.logits(ids)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
        assert list(s0.generate_ids(p, max_new_tokens=16, ignore_eos=True)) == \
            list(fz.generate_ids(p, max_new_tokens=16, ignore_eos=True))


def test_default_int4_is_the_split_with_int8_activations(llama_fp32, graphs):
    paths, infos = graphs
    q = infos["default"]
    assert q["algorithm"] == "minmax-float-zp+split" and q["accuracy_level"] == 4 and q["zero_points"] == "uint8"
    assert "float16" in q["correction"] and q["embedding"] == "GatherBlockQuantized (rtn)"
    g = onnx.load(str(paths["default"])).graph
    levels = {a.i for n in g.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    fz, d = _frontend(llama_fp32, paths["float_zp"]), _frontend(llama_fp32, paths["default"])
    ids = fz.encode_prompt(PROMPTS[0] + " " + PROMPTS[1])
    a, b = fz.logits(ids), d.logits(ids)
    rel = np.abs(b - a).max() / np.abs(a).max()
    assert 0 < rel < 0.05                             # int8 activations: close to, not equal to, float compute
