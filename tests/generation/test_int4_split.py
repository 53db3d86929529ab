"""INT4 with GGUF Q4_1's grid on ORT's fast kernels (issue 23), on the tiny random llama the generation tests
use (a tiny GPT-2 exports its Conv1D layers as Gemm: only lm_head would be a MatMulNBits): the float-zero-point
graph and the same graph after the zero-point split (passes/zero_point_split.py) give the same logits and
greedy tokens; the fold (passes/zero_point_fold.py + matmulnbits_fuse.py, the default) stays far closer to
them than ORT's RTN, in fewer nodes."""
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
    out = {"float_zp": tmp / "fz.onnx", "split0": tmp / "s0.onnx", "fold0": tmp / "f0.onnx", "default": tmp / "d.onnx",
           "rtn": tmp / "rtn.onnx"}
    infos = {
        "float_zp": quantize_float_zp(src, out["float_zp"], 4, 16, [], split=False),
        "split0": quantize_float_zp(src, out["split0"], 4, 16, [], accuracy_level=0, correction_dtype="float32",
                                    form="split"),
        "fold0": quantize_float_zp(src, out["fold0"], 4, 16, [], accuracy_level=0, form="fold"),
        "default": quantize(src, out["default"], "weight-only", 4, 16, [], algorithm="minmax-float-zp"),
        "rtn": quantize(src, out["rtn"], "weight-only", 4, 16, [], algorithm="rtn"),
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
    # float zero points, but for lm_head: quantized apart at 8 bits with integer ones (DEFAULT_HEAD_BITS)
    assert _zero_point_types(paths["float_zp"]) == {onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8}
    assert _zero_point_types(paths["split0"]) == {onnx.TensorProto.UINT8}
    n_mm = sum(n.op_type == "MatMulNBits" for n in onnx.load(str(paths["split0"])).graph.node)
    assert n_mm == 2 * 7 + 1 and infos["split0"]["correction"].endswith(f"{2 * 7} MatMulNBits")   # + lm_head
    fz, s0 = _frontend(llama_fp32, paths["float_zp"]), _frontend(llama_fp32, paths["split0"])
    for p in PROMPTS:
        ids = fz.encode_prompt(p)
        a, b = fz.logits(ids), s0.logits(ids)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
        assert list(s0.generate_ids(p, max_new_tokens=16, ignore_eos=True)) == \
            list(fz.generate_ids(p, max_new_tokens=16, ignore_eos=True))


def test_fold_graph_is_close_to_the_float_zero_points_in_fewer_nodes(llama_fp32, graphs):
    """The folded correction (E rounded to 4 bits inside the MatMulNBits, q/k/v and gate/up fused) stays
    much closer to the float zero points than ORT's RTN (every block rounded again), in fewer nodes."""
    paths, infos = graphs
    q = infos["fold0"]
    assert q["algorithm"] == "minmax-float-zp+fold" and q["correction_form"] == "fold"
    assert "14 MatMulNBits" in q["correction"] and "fused into 4" in q["correction"]
    assert q["head"].endswith("8-bit rtn (integer zero points), accuracy_level 4")   # lm_head apart, 8 bits
    ops = [n.op_type for n in onnx.load(str(paths["fold0"])).graph.node]
    n_split, n_float = (len(onnx.load(str(paths[k])).graph.node) for k in ("split0", "float_zp"))
    assert ops.count("MatMulNBits") == 2 * 4 + 1 and ops.count("Split") == 4
    # 8 inputs (4 a layer; lm_head is 8-bit RTN): the split adds a BlockSum each + Correction and Add per
    # node (14); the fold a BlockSum and a Concat each, and fusing q/k/v, gate/up trades 6 nodes for 4 Splits
    assert (n_split - n_float, len(ops) - n_float) == (8 + 2 * 14, 2 * 8 - 6 + 4)
    fz, f0, rtn = (_frontend(llama_fp32, paths[k]) for k in ("float_zp", "fold0", "rtn"))
    agree = {"fold": 0, "rtn": 0}                     # greedy tokens equal to the float zero points' (prefix)
    for p in PROMPTS:
        ids = fz.encode_prompt(p)
        a, b, c = fz.logits(ids), f0.logits(ids), rtn.logits(ids)
        assert 0 < np.abs(b - a).max() < np.abs(c - a).max() / 3
        ref = list(fz.generate_ids(p, max_new_tokens=16, ignore_eos=True))
        for k, fe in (("fold", f0), ("rtn", rtn)):
            got = list(fe.generate_ids(p, max_new_tokens=16, ignore_eos=True))
            agree[k] += next((i for i, (x, y) in enumerate(zip(got, ref)) if x != y), 16)
    assert agree["fold"] >= 0.6 * 16 * len(PROMPTS) and agree["fold"] > agree["rtn"]


def test_default_int4_is_the_fold_with_int8_activations(llama_fp32, graphs):
    paths, infos = graphs
    q = infos["default"]
    assert q["algorithm"] == "minmax-float-zp+fold" and q["accuracy_level"] == 4 and q["zero_points"] == "uint8"
    assert q["correction_form"] == "fold" and q["embedding"] == "GatherBlockQuantized (rtn)"
    g = onnx.load(str(paths["default"])).graph
    levels = {a.i for n in g.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    fz, d = _frontend(llama_fp32, paths["float_zp"]), _frontend(llama_fp32, paths["default"])
    ids = fz.encode_prompt(PROMPTS[0] + " " + PROMPTS[1])
    a, b = fz.logits(ids), d.logits(ids)
    rel = np.abs(b - a).max() / np.abs(a).max()
    assert 0 < rel < 0.05                             # int8 activations: close to, not equal to, float compute
