"""`edgecompile compare`: same inputs through two builds; the first diverging node is found."""
import json

import numpy as np
import pytest
from conftest import run_cli

from edgecompile.verify.compare import compare, render_text
from edgecompile.verify.localize import localize
from edgecompile.data import Dataset


def _corrupt(src_onnx, dest, weight: str, scale: float = 1.5, rename: bool = False):
    """Copy an ONNX model, scaling one initializer; returns the name of the node consuming it."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src_onnx))
    for init in m.graph.initializer:
        if init.name == weight:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), weight))
            break
    else:
        raise AssertionError(f"no initializer {weight}")
    consumer = next(n.name for n in m.graph.node if weight in n.input)
    if rename:
        for i, n in enumerate(m.graph.node):
            n.name = f"renamed_{i}"
    onnx.save(m, str(dest))
    return consumer


@pytest.fixture(scope="module")
def model_onnx(digits_bundle):
    return digits_bundle.path / "model.onnx"


def test_finds_the_corrupted_layer(digits_bundle, model_onnx, tmp_path):
    bad = tmp_path / "bad.onnx"
    node = _corrupt(model_onnx, bad, "features.1.0.weight")          # the second conv
    res = compare(digits_bundle.path, bad)
    loc = res["localization"]
    assert loc["status"] == "diverged" and loc["matching"] == "name"
    assert loc["first"]["node"] == node and loc["first"]["op_type"] == "Conv"
    assert loc["first"]["rel_error"] > 0.1
    assert loc["first"]["previous"]["rel_error"] == 0.0            # everything before it is bit-identical
    task = res["task"]
    assert task["metric"] == "top1" and task["a"] >= 0.95 and task["delta"] < 0 and task["agreement"] < 1
    assert res["outputs"]["logits"]["cosine"] < 0.99 and res["data"]["identity"] == "digits:test"
    text = render_text(res)
    assert f"first diverging node: {node} (Conv)" in text


def test_first_layer_and_multi_round_bisection(digits_bundle, model_onnx, tmp_path):
    bad = tmp_path / "bad0.onnx"
    node = _corrupt(model_onnx, bad, "features.3.0.weight", scale=-1.0)   # the third conv, late in the graph
    ds = Dataset("x", {"input": np.random.default_rng(0).random((16, 1, 8, 8), np.float32)})
    one = localize(model_onnx.read_bytes(), bad.read_bytes(), ds)
    two = localize(model_onnx.read_bytes(), bad.read_bytes(), ds, fanout=1)   # plain binary search
    assert one["first"]["node"] == two["first"]["node"] == node
    assert two["rounds"] > one["rounds"] >= 1
    first = tmp_path / "first.onnx"
    node0 = _corrupt(model_onnx, first, "features.0.0.weight")
    loc = localize(model_onnx.read_bytes(), first.read_bytes(), ds, fanout=1)
    assert loc["first"]["node"] == node0 and "previous" not in loc["first"]


def test_matches_by_position_when_names_differ(digits_bundle, model_onnx, tmp_path):
    bad = tmp_path / "renamed.onnx"
    node = _corrupt(model_onnx, bad, "features.1.0.weight", rename=True)
    res = compare(digits_bundle.path, bad, samples=64)
    loc = res["localization"]
    assert loc["matching"] == "position" and loc["first"]["node"] == node
    assert loc["first"]["node_b"].startswith("renamed_") and res["data"]["n"] == 64


def test_identical_builds_do_not_diverge(digits_bundle, model_onnx, tmp_path):
    res = compare(digits_bundle.path, model_onnx, localize=True)
    assert res["localization"]["status"] == "no divergence"
    assert res["task"]["delta"] == 0 and res["outputs"]["logits"]["max_abs"] == 0.0
    # small honest noise stays under the tolerance; a large tolerance hides a real divergence
    bad = tmp_path / "bad.onnx"
    _corrupt(model_onnx, bad, "features.1.0.weight", scale=1.0 + 1e-5)
    assert compare(digits_bundle.path, bad)["localization"]["status"] == "no divergence"
    _corrupt(model_onnx, bad, "features.1.0.weight", scale=1.5)
    assert compare(digits_bundle.path, bad, tolerance=10.0)["localization"]["status"] == "no divergence"


def test_model_package_against_onnx_and_npz_data(model_onnx, tmp_path):
    from edgecompile.source import resolve_source

    ds = resolve_source("digits").dataset("test").take(40)
    npz = tmp_path / "d.npz"
    np.savez(npz, input=ds.inputs["input"])                      # no labels: agreement is the metric
    bad = tmp_path / "bad.onnx"
    node = _corrupt(model_onnx, bad, "features.1.0.weight", scale=3.0)
    res = compare("models/digits", bad, data=npz)
    assert res["a"]["kind"] == "model" and res["data"]["n"] == 40 and not res["data"]["labels"]
    assert res["task"]["metric"] == "confident_agreement" and res["task"]["b"] < 1.0
    assert res["localization"]["first"]["node"] == node          # torch side exported to ONNX for the search


def test_cli_compare_json_and_errors(digits_bundle, model_onnx, tmp_path, bundle_copy):
    bad = tmp_path / "bad.onnx"
    node = _corrupt(model_onnx, bad, "features.1.0.weight")
    rc, out, err = run_cli("compare", digits_bundle.path, bad, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["localization"]["first"]["node"] == node and err == ""      # --json: nothing on stderr
    rc, out, _ = run_cli("compare", digits_bundle.path, model_onnx, "--json", "--no-localize")
    same = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert same["outputs"]["logits"]["snr_db"] is None and same["outputs"]["logits"]["max_abs"] == 0
    rc, out, err = run_cli("compare", digits_bundle.path, bad, "--no-localize", "-n", "50")
    assert rc == 0 and "first diverging" not in out and "(50 samples, labels)" in out and "top1" in out
    (bundle_copy / "model.onnx").write_bytes(bad.read_bytes())            # tampered bundle is refused
    rc, _, err = run_cli("compare", bundle_copy, digits_bundle.path)
    assert rc == 1 and "sha256" in err and "Traceback" not in err
    # the other bad inputs are EdgeCompileErrors too (main() maps those to one line + exit code)
    from edgecompile.errors import DataError, ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        compare(digits_bundle.path, tmp_path / "missing.onnx")
    with pytest.raises(DataError, match="does not exist") as exc:
        compare(digits_bundle.path, bad, data=tmp_path / "nope.npz")
    assert exc.value.exit_code == 2
    import onnx

    other = onnx.load(str(model_onnx))
    other.graph.input[0].name = "image"
    for n in other.graph.node:
        n.input[:] = ["image" if i == "input" else i for i in n.input]
    onnx.save(other, str(tmp_path / "other.onnx"))
    with pytest.raises(DataError, match="different inputs"):
        compare(digits_bundle.path, tmp_path / "other.onnx")


def test_non_onnx_side_is_not_localized(digits_bundle):
    from edgecompile.verify.compare import localize_sides, open_side

    a = open_side(digits_bundle.path)
    b = open_side(digits_bundle.path)
    b.onnx, b.onnx_note = (lambda: None), "the tvm bundle has no ONNX artifact"
    ds = Dataset("x", {"input": np.zeros((2, 1, 8, 8), np.float32)})
    loc = localize_sides(a, b, ds)
    assert loc == {"status": "not applicable", "reason": f"{digits_bundle.path}: the tvm bundle has no ONNX artifact"}


def test_per_node_errors_are_the_per_layer_table(digits_bundle, model_onnx, tmp_path):
    from edgecompile.verify.localize import per_layer_error
    from edgecompile.source import resolve_source

    bad = tmp_path / "bad.onnx"
    node = _corrupt(model_onnx, bad, "features.1.0.weight")
    ds = resolve_source("digits").dataset("test")
    res = compare(digits_bundle.path, bad, localize=False, per_node=True, samples=16)
    rows = res["nodes"]["rows"]
    errors = {r["node"]: r["rel_error"] for r in rows}
    names = [r["node"] for r in rows]
    assert errors[node] > 0.1 and all(errors[n] == 0 for n in names[:names.index(node)])
    assert "per-node error of B against A" in render_text(res)
    table = per_layer_error(model_onnx.read_bytes(), bad.read_bytes(), ds)
    assert [r["node"] for r in table] == names and table[0]["snr_db"] is None     # identical: no finite SNR
    assert per_layer_error(b"not onnx", bad.read_bytes(), ds) is None              # diagnostics never break a build


def test_tensor_error_compares_finite_entries_and_flags_mismatched_infinities():
    """An attention-mask bias of -inf (MPNet's, or any masked softmax) is the same -inf on both sides:
    the error is that of the finite entries, with no NaN and no RuntimeWarning; a tensor that is
    infinite on one side only is infinitely wrong."""
    import warnings

    from edgecompile.verify.localize import tensor_error

    ref = np.array([[-np.inf, 1.0, 2.0], [3.0, -np.inf, 4.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = tensor_error(ref, ref.copy())
        near = tensor_error(ref, ref + np.array([[0, 0, 0.1], [0, 0, 0]], np.float32))
        wrong = tensor_error(ref, np.where(np.isinf(ref), 5.0, ref).astype(np.float32))
    assert same["rel_error"] == 0.0 and same["cosine"] == pytest.approx(1.0)
    assert near["rel_error"] == pytest.approx(0.1 / np.linalg.norm([1.0, 2.0, 3.0, 4.0]), rel=1e-5)
    assert wrong["rel_error"] == float("inf")
