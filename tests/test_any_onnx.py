"""Any ONNX model ONNX Runtime runs builds, verifies and reports: input semantics from the model, every
dtype, output closeness for non-classifiers, single-operator models end to end, a detection-style model
with a fixed-shape second input calibrated and quantized from one .npz."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import edgecompile
from edgecompile.data import load_npz
from edgecompile.errors import DataError
from edgecompile.runtime import load
from edgecompile.source import resolve_source


def _model(path, nodes, ins, outs, inits=(), opset=17):
    g = h.make_graph(nodes, path.stem, ins, outs, initializer=list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def vi(name, t, shape):
    return h.make_tensor_value_info(name, t, shape)


# -- input semantics and .npz loading (no builds) ---------------------------------------------------

@pytest.fixture(scope="module")
def reducesum(tmp_path_factory):
    d = tmp_path_factory.mktemp("rs")
    return resolve_source(_model(d / "rs.onnx", [h.make_node("ReduceSum", ["x", "axes"], ["y"])],
                                 [vi("x", T.FLOAT, [3, 4, 5]), vi("axes", T.INT64, [1])], [vi("y", T.FLOAT, None)]))


def test_fixed_first_dim_and_axes_are_one_feed(reducesum, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 4, 5), np.float32), axes=np.array([1]))
    ds = load_npz(tmp_path / "d.npz", reducesum.inputs)
    assert len(ds) == 1 and ds.whole == {"x", "axes"} and not ds.batched
    feed = ds.first_feed()
    assert feed["x"].shape == (3, 4, 5) and feed["axes"].shape == (1,)
    assert reducesum.metric == "output_closeness"


def test_symbolic_batch_with_scalar_and_fixed_info(tmp_path):
    src = resolve_source(_model(tmp_path / "m.onnx", [h.make_node("Add", ["x", "s"], ["y"])],
                                [vi("x", T.FLOAT, ["N", 4]), vi("s", T.FLOAT, [])], [vi("y", T.FLOAT, ["N", 4])]))
    np.savez(tmp_path / "d.npz", x=np.ones((6, 4), np.float32), s=np.array(2.0, np.float32))
    ds = load_npz(tmp_path / "d.npz", src.inputs)
    assert len(ds) == 6 and ds.whole == {"s"}
    batches = list(ds.batches(4))
    assert [b["x"].shape for b in batches] == [(4, 4), (2, 4)] and all(b["s"].shape == () for b in batches)


def test_fixed_batch_of_one_takes_stacked_samples_and_npy(tmp_path):
    w = onnx.numpy_helper.from_array(_R.standard_normal((3, 4)).astype(np.float32), "w")
    src = resolve_source(_model(tmp_path / "m.onnx", [h.make_node("MatMul", ["x", "w"], ["y"])],
                                [vi("x", T.FLOAT, [1, 3])], [vi("y", T.FLOAT, [1, 4])], [w]))
    np.save(tmp_path / "d.npy", np.ones((5, 3), np.float32))
    ds = load_npz(tmp_path / "d.npy", src.inputs)
    assert len(ds) == 5 and ds.batched and [b["x"].shape for b in ds.batches(64)] == [(1, 3)] * 5
    np.save(tmp_path / "one.npy", np.ones((1, 3), np.float32))
    assert len(load_npz(tmp_path / "one.npy", src.inputs)) == 1
    bundle = edgecompile.build(tmp_path / "m.onnx", data=tmp_path / "d.npy", output=tmp_path / "b", backend="ort",
                               precision="int8", force=True)          # calibrated and evaluated one sample at a time
    report = json.loads((bundle.path / "report.json").read_text())
    assert bundle.manifest["precision"] == "int8" and report["accuracy"]["n"] == 5


def test_shape_mismatch_names_input_expected_and_given(reducesum, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((1, 4, 5), np.float32), axes=np.array([1]))
    with pytest.raises(DataError) as e:
        load_npz(tmp_path / "d.npz", reducesum.inputs)
    assert "'x'" in e.value.message and "[1, 4, 5]" in e.value.message and "[3, 4, 5]" in e.value.message
    assert "\n" not in e.value.message


def test_object_arrays_refused_unicode_accepted_corrupt_is_dataerror(tmp_path):
    src = resolve_source(_model(tmp_path / "s.onnx", [h.make_node("Identity", ["x"], ["y"])],
                                [vi("x", T.STRING, [2])], [vi("y", T.STRING, [2])]))
    assert src.inputs[0].dtype == "str"
    np.savez(tmp_path / "ok.npz", x=np.array(["ab", "c"]))
    assert load_npz(tmp_path / "ok.npz", src.inputs).inputs["x"].dtype.kind == "U"
    np.savez(tmp_path / "obj.npz", x=np.array(["ab", "c"], dtype=object))
    with pytest.raises(DataError, match="object"):
        load_npz(tmp_path / "obj.npz", src.inputs)
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(tmp_path / "bad.npz", src.inputs)


# -- single-operator models end to end ---------------------------------------------------------------

_R = np.random.default_rng(0)


def _f(*shape):
    return _R.standard_normal(shape).astype(np.float32)


# name -> (nodes, inputs, outputs, feeds)
OPS = {
    "relu": ([h.make_node("Relu", ["x"], ["y"])], [vi("x", T.FLOAT, [3, 4])], [vi("y", T.FLOAT, [3, 4])],
             {"x": _f(3, 4)}),
    "reducesum_axes": ([h.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                       [vi("x", T.FLOAT, [3, 4, 5]), vi("axes", T.INT64, [1])], [vi("y", T.FLOAT, None)],
                       {"x": _f(3, 4, 5), "axes": np.array([1])}),
    "gather_indices": ([h.make_node("Gather", ["x", "i"], ["y"], axis=0)],
                       [vi("x", T.FLOAT, [5, 3]), vi("i", T.INT64, [2, 2])], [vi("y", T.FLOAT, None)],
                       {"x": _f(5, 3), "i": np.array([[0, 4], [2, 1]])}),
    "reshape_shape": ([h.make_node("Reshape", ["x", "s"], ["y"])],
                      [vi("x", T.FLOAT, [2, 6]), vi("s", T.INT64, [2])], [vi("y", T.FLOAT, None)],
                      {"x": _f(2, 6), "s": np.array([3, 4])}),
    "add_scalar": ([h.make_node("Add", ["x", "s"], ["y"])], [vi("x", T.FLOAT, [2, 3]), vi("s", T.FLOAT, [])],
                   [vi("y", T.FLOAT, [2, 3])], {"x": _f(2, 3), "s": np.array(1.5, np.float32)}),
    "argmax_int": ([h.make_node("ArgMax", ["x"], ["y"], axis=1)], [vi("x", T.FLOAT, [4, 6])],
                   [vi("y", T.INT64, None)], {"x": _f(4, 6)}),
    "greater_bool": ([h.make_node("Greater", ["a", "b"], ["y"])], [vi("a", T.INT32, [5]), vi("b", T.INT32, [5])],
                     [vi("y", T.BOOL, [5])],
                     {"a": np.arange(5, dtype=np.int32), "b": np.full(5, 2, np.int32)}),
    "cast_fp16": ([h.make_node("Cast", ["x"], ["y"], to=T.FLOAT)], [vi("x", T.FLOAT16, [2, 3])],
                  [vi("y", T.FLOAT, [2, 3])], {"x": _f(2, 3).astype(np.float16)}),
    "uint8_max": ([h.make_node("Max", ["a", "b"], ["y"])], [vi("a", T.UINT8, [4]), vi("b", T.UINT8, [4])],
                  [vi("y", T.UINT8, [4])], {"a": np.array([1, 200, 3, 4], np.uint8),
                                            "b": np.array([5, 6, 255, 0], np.uint8)}),
    "range_scalars": ([h.make_node("Range", ["a", "b", "d"], ["y"])],
                      [vi("a", T.INT32, []), vi("b", T.INT32, []), vi("d", T.INT32, [])], [vi("y", T.INT32, None)],
                      {"a": np.array(2, np.int32), "b": np.array(11, np.int32), "d": np.array(3, np.int32)}),
    "topk_k": ([h.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)], [vi("x", T.FLOAT, [3, 5]), vi("k", T.INT64, [1])],
               [vi("v", T.FLOAT, None), vi("i", T.INT64, None)], {"x": _f(3, 5), "k": np.array([2])}),
    "where_bool": ([h.make_node("Where", ["c", "a", "b"], ["y"])],
                   [vi("c", T.BOOL, [2, 3]), vi("a", T.INT8, [2, 3]), vi("b", T.INT8, [2, 3])],
                   [vi("y", T.INT8, [2, 3])],
                   {"c": np.array([[True, False, True], [False, True, False]]),
                    "a": np.arange(6, dtype=np.int8).reshape(2, 3), "b": -np.ones((2, 3), np.int8)}),
    "expand_shape": ([h.make_node("Expand", ["x", "s"], ["y"])], [vi("x", T.FLOAT, [3, 1]), vi("s", T.INT64, [2])],
                     [vi("y", T.FLOAT, None)], {"x": _f(3, 1), "s": np.array([3, 4])}),
    "matmul": ([h.make_node("MatMul", ["a", "b"], ["y"])], [vi("a", T.FLOAT, [2, 3, 4]), vi("b", T.FLOAT, [4, 5])],
               [vi("y", T.FLOAT, [2, 3, 5])], {"a": _f(2, 3, 4), "b": _f(4, 5)}),
    "transpose": ([h.make_node("Transpose", ["x"], ["y"], perm=[2, 0, 1])], [vi("x", T.FLOAT, [2, 3, 4])],
                  [vi("y", T.FLOAT, [4, 2, 3])], {"x": _f(2, 3, 4)}),
    "softmax": ([h.make_node("Softmax", ["x"], ["y"], axis=-1)], [vi("x", T.FLOAT, [3, 7])],
                [vi("y", T.FLOAT, [3, 7])], {"x": _f(3, 7)}),
    "concat": ([h.make_node("Concat", ["a", "b"], ["y"], axis=0)],
               [vi("a", T.FLOAT, [2, 3]), vi("b", T.FLOAT, [4, 3])], [vi("y", T.FLOAT, [6, 3])],
               {"a": _f(2, 3), "b": _f(4, 3)}),
    "slice_inputs": ([h.make_node("Slice", ["x", "s", "e", "ax"], ["y"])],
                     [vi("x", T.FLOAT, [4, 6]), vi("s", T.INT64, [1]), vi("e", T.INT64, [1]), vi("ax", T.INT64, [1])],
                     [vi("y", T.FLOAT, None)], {"x": _f(4, 6), "s": np.array([1]), "e": np.array([5]),
                                                "ax": np.array([1])}),
    "unsqueeze_axes": ([h.make_node("Unsqueeze", ["x", "ax"], ["y"])],
                       [vi("x", T.FLOAT, [3, 4]), vi("ax", T.INT64, [2])], [vi("y", T.FLOAT, None)],
                       {"x": _f(3, 4), "ax": np.array([0, 3])}),
    "pad_pads": ([h.make_node("Pad", ["x", "p"], ["y"])], [vi("x", T.FLOAT, [2, 3]), vi("p", T.INT64, [4])],
                 [vi("y", T.FLOAT, None)], {"x": _f(2, 3), "p": np.array([0, 1, 2, 0])}),
    "tile_repeats": ([h.make_node("Tile", ["x", "r"], ["y"])], [vi("x", T.INT32, [2, 2]), vi("r", T.INT64, [2])],
                     [vi("y", T.INT32, None)],
                     {"x": np.arange(4, dtype=np.int32).reshape(2, 2), "r": np.array([2, 3])}),
    "onehot_depth": ([h.make_node("OneHot", ["i", "d", "v"], ["y"])],
                     [vi("i", T.INT64, [4]), vi("d", T.INT64, []), vi("v", T.FLOAT, [2])], [vi("y", T.FLOAT, None)],
                     {"i": np.array([0, 2, 1, 3]), "d": np.array(5), "v": np.array([0.0, 1.0], np.float32)}),
    "clip_scalars": ([h.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                     [vi("x", T.FLOAT, [3, 4]), vi("lo", T.FLOAT, []), vi("hi", T.FLOAT, [])],
                     [vi("y", T.FLOAT, [3, 4])],
                     {"x": _f(3, 4), "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}),
    "maxpool": ([h.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                [vi("x", T.FLOAT, [1, 2, 4, 4])], [vi("y", T.FLOAT, [1, 2, 2, 2])], {"x": _f(1, 2, 4, 4)}),
    "cumsum_axis": ([h.make_node("CumSum", ["x", "ax"], ["y"])], [vi("x", T.INT64, [2, 5]), vi("ax", T.INT32, [])],
                    [vi("y", T.INT64, [2, 5])], {"x": np.arange(10).reshape(2, 5), "ax": np.array(1, np.int32)}),
    "nonzero": ([h.make_node("NonZero", ["x"], ["y"])], [vi("x", T.FLOAT, [2, 3])], [vi("y", T.INT64, None)],
                {"x": np.array([[0, 1, 0], [2, 0, 3]], np.float32)}),
    "equal_uint64": ([h.make_node("Equal", ["a", "b"], ["y"])], [vi("a", T.UINT64, [4]), vi("b", T.UINT64, [4])],
                     [vi("y", T.BOOL, [4])], {"a": np.array([1, 2, 3, 2**63], np.uint64),
                                              "b": np.array([1, 0, 3, 2**63], np.uint64)}),
    "layernorm": ([h.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                  [vi("x", T.FLOAT, [2, 3, 8]), vi("g", T.FLOAT, [8]), vi("b", T.FLOAT, [8])],
                  [vi("y", T.FLOAT, [2, 3, 8])], {"x": _f(2, 3, 8), "g": _f(8), "b": _f(8)}),
    "string_identity": ([h.make_node("Identity", ["x"], ["y"])], [vi("x", T.STRING, [3])],
                        [vi("y", T.STRING, [3])], {"x": np.array(["a", "bc", ""])}),
}


@pytest.fixture(scope="session")
def op_results(tmp_path_factory):
    """Every op model built with `edgecompile.build` (ORT backend) and run through the runtime."""
    from onnx.reference import ReferenceEvaluator

    root = tmp_path_factory.mktemp("ops")
    out = {}
    for name, (nodes, ins, outs, feeds) in OPS.items():
        path = _model(root / f"{name}.onnx", nodes, ins, outs)
        np.savez(root / f"{name}.npz", **feeds)
        bundle = edgecompile.build(path, data=root / f"{name}.npz", output=root / name, backend="ort")
        ref = ReferenceEvaluator(onnx.load(path)).run(None, {k: v.astype(object) if v.dtype.kind == "U" else v
                                                              for k, v in feeds.items()})
        with load(bundle.path) as runner:
            got = list(runner.run(feeds).values())
        out[name] = (got, ref, json.loads((bundle.path / "report.json").read_text()))
    return out


@pytest.mark.parametrize("name", sorted(OPS))
def test_single_op_matches_reference(op_results, name):
    got, ref, report = op_results[name]
    for g, r in zip(got, ref):
        r = np.asarray(r)
        assert g.shape == r.shape
        if r.dtype.kind == "f":
            np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)
        else:
            assert (g.astype(str) == r.astype(str)).all() if r.dtype.kind in "UO" else (g == r).all()
    acc = report["accuracy"]
    assert acc["metric"] == "output_closeness" and acc["candidate"] == 1.0 and acc["n"] == 1


def test_closeness_reports_worst_element():
    from edgecompile.verify.metrics import closeness

    ref = np.zeros((1, 4), np.float32)
    cand = ref.copy()
    cand[0, 2] = 0.5
    c = closeness(cand, ref)
    assert c["rule"] == "allclose" and c["worst"]["index"] == [0, 2] and c["worst"]["abs_error"] == 0.5
    assert closeness(np.array([[1, 2]]), np.array([[1, 3]]))["worst"]["index"] == [0, 1]


def test_pinned_openvino_names_unsupported_nodes(tmp_path):
    from edgecompile.errors import CompileError

    path = _model(tmp_path / "s.onnx", [h.make_node("Identity", ["x"], ["y"], name="id0")],
                  [vi("x", T.STRING, [2])], [vi("y", T.STRING, [2])])
    np.savez(tmp_path / "s.npz", x=np.array(["a", "b"]))
    with pytest.raises(CompileError) as e:
        edgecompile.build(path, data=tmp_path / "s.npz", output=tmp_path / "b", backend="openvino")
    assert "Identity 'id0' (opset 17)" in e.value.message and "--backend ort" in (e.value.hint or "")


# -- detection-style: image batch + fixed [1, 3] image info, quantized from one .npz ----------------

def test_detection_style_two_inputs_quantizes(tmp_path):
    w = onnx.numpy_helper.from_array(_R.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    nodes = [h.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("GlobalAveragePool", ["r"], ["p"]),
             h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Slice", ["f", "st", "en", "ax"], ["f3"]),
             h.make_node("Mul", ["f3", "info"], ["boxes"])]
    inits = [w, onnx.numpy_helper.from_array(np.array([0]), "st"), onnx.numpy_helper.from_array(np.array([3]), "en"),
             onnx.numpy_helper.from_array(np.array([1]), "ax")]
    path = _model(tmp_path / "det.onnx", nodes, [vi("image", T.FLOAT, ["N", 3, 16, 16]), vi("info", T.FLOAT, [1, 3])],
                  [vi("boxes", T.FLOAT, ["N", 3])], inits)
    np.savez(tmp_path / "det.npz", image=_R.random((16, 3, 16, 16)).astype(np.float32),
             info=np.array([[16.0, 16.0, 1.0]], np.float32))
    bundle = edgecompile.build(path, data=tmp_path / "det.npz", output=tmp_path / "det-int8", backend="ort",
                               precision="int8", force=True)
    assert bundle.manifest["precision"] == "int8"
    q = onnx.load(bundle.path / "model.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    report = json.loads((bundle.path / "report.json").read_text())
    assert report["accuracy"]["n"] == 16
    with load(bundle.path) as runner:
        out = runner.run({"image": np.zeros((2, 3, 16, 16), np.float32), "info": np.ones((1, 3), np.float32)})
    assert out["boxes"].shape == (2, 3)
