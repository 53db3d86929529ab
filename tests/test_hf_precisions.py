"""Hugging Face encoders beyond ORT FP32/INT8: `--precision fp16`, `--backend openvino --precision int8`
and `--backend auto` (the ORT candidate keeps ORT's transformer fusions), and the SmoothQuant-style
smoothing recorded in an INT8 text bundle's manifest. Tiny random BERTs as in tests/test_hf.py."""
from __future__ import annotations

import numpy as np
import pytest

from test_hf import TEXTS, _tiny_dir, _torch_embed


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory.mktemp("hfp") / "tiny-embed", classifier=False)


def _cos_min(a, b) -> float:
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def _ops(bundle) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(bundle.path / "model.onnx").graph.node}


def test_fp16_text_bundle_on_ort(tiny_dir, tmp_path):
    import edgecompile
    from edgecompile.runtime import load

    b = edgecompile.build(tiny_dir, target="cpu", backend="ort", precision="fp16", output=tmp_path / "fp16")
    assert b.manifest["precision"] == "fp16"
    assert [p["name"] for p in b.manifest["passes"]][0] == "transformer_fusion"
    with load(b.path) as runner:
        emb = runner.encode(TEXTS)
    assert emb.dtype == np.float32 and emb.shape == (3, 32)
    assert _cos_min(emb, _torch_embed(tiny_dir, TEXTS)) > 0.999


def test_openvino_int8_text_bundle(tiny_dir, tmp_path):
    """Static QDQ INT8 of the plain (unfused) graph on OpenVINO; --force ships it even though the random
    tiny encoder loses retrieval agreement (the fallback itself is tested in tests/test_hf.py)."""
    import openvino  # noqa: F401
    import edgecompile
    from edgecompile.compiler.config import Config
    from edgecompile.runtime import load

    cfg = Config().with_overrides({"passes.quantize.mode": "static", "build.force": True})
    b = edgecompile.build(tiny_dir, target="cpu", backend="openvino", precision="int8", config=cfg,
                          output=tmp_path / "ov-int8")
    assert b.manifest["backend"] == "openvino" and b.manifest["precision"] == "int8"
    assert [p["name"] for p in b.manifest["passes"]] == ["simplify", "quantize"]
    q = next(p for p in b.manifest["passes"] if p["name"] == "quantize")
    assert q["modified"] and q["options"]["mode"] == "static"
    # a token-id model: Q/DQ on the MatMul inputs only, every MatMul activation smoothed (QKV, attention
    # output, FFN in, FFN out: 4 per layer), at the matmul-only default alpha
    assert q["options"]["ops"] == "matmul"
    assert q["options"]["smoothing"]["alpha"] == 0.95 and q["options"]["smoothing"]["smoothed"] == 8
    assert "FakeQuantize" in (b.path / "model.xml").read_text()        # OpenVINO's form of the QDQ pairs
    with load(b.path) as runner:
        emb = runner.encode(TEXTS)
    assert emb.shape == (3, 32) and _cos_min(emb, _torch_embed(tiny_dir, TEXTS)) > 0.95


def test_unbounded_int8_that_loses_accuracy_is_shipped_with_a_warning(tiny_dir, tmp_path):
    """`-p int8` with no --max-accuracy-drop ships int8 (what was asked) but says what it lost and how to
    bound it; the fp32 candidate's status does not claim a bound."""
    import openvino  # noqa: F401
    import edgecompile
    from edgecompile.compiler.config import Config

    b = edgecompile.build(tiny_dir, target="cpu", backend="openvino", precision="int8", output=tmp_path / "b",
                          config=Config().with_overrides({"passes.quantize.mode": "static",   # clip half of |x|
                                                          "passes.quantize.calibrate": "percentile",
                                                          "passes.quantize.percentile": 50.0}))
    rep = b.report()
    assert rep["precision"] == "int8" and rep["quantization"]["metric_drop"] > 0.5
    assert [w for w in rep["warnings"] if "no --max-accuracy-drop is set" in w and " pt of the task metric" in w]
    fp32 = rep["precision_notes"]["candidates"][0]
    assert fp32["status"].endswith("(no max_accuracy_drop set)")


def test_auto_measures_a_fused_ort_candidate(tiny_dir, tmp_path, monkeypatch):
    """--backend auto: no graph pass before the split; the ORT candidate gets ORT's fusions (contrib ops
    in its graph), the OpenVINO one onnxslim; the bundle carries the chosen candidate's passes."""
    import edgecompile
    from edgecompile.compiler import hf
    from edgecompile.runtime import load

    seen = []
    real = hf.candidate_graph_passes

    def spy(plan, model, evaluator, records):
        out = real(plan, model, evaluator, records)
        seen.append((plan.backend, records[-1].name, {n.op_type for n in out.graph}))
        return out

    monkeypatch.setattr(hf, "candidate_graph_passes", spy)
    b = edgecompile.build(tiny_dir, target="cpu", backend="auto", precision="fp32", output=tmp_path / "auto")
    by_backend = {backend: (name, ops) for backend, name, ops in seen}
    assert by_backend["ort"][0] == "transformer_fusion"
    assert {"Attention", "SkipLayerNormalization"} <= by_backend["ort"][1]
    assert by_backend["openvino"][0] == "simplify" and "Attention" not in by_backend["openvino"][1]
    chosen = b.manifest["autochoice"]["chosen"]["backend"]
    assert [p["name"] for p in b.manifest["passes"]] == [by_backend[chosen][0]]
    with load(b.path) as runner:
        emb = runner.encode(TEXTS)
    assert _cos_min(emb, _torch_embed(tiny_dir, TEXTS)) > 0.9999


def test_openvino_dynamic_int8_text_bundle(tiny_dir, tmp_path):
    """Dynamic INT8 on OpenVINO: MatMul weights stored as uint8 (compressed in the IR, no FakeQuantize), the
    activations quantized per group by the plugin at run time, the group size recorded and applied."""
    import openvino  # noqa: F401
    import edgecompile
    from edgecompile.compiler.config import Config
    from edgecompile.runtime import load

    cfg = Config().with_overrides({"passes.quantize.mode": "dynamic", "build.force": True,
                                   "openvino.dynamic_quantization_group_size": 16})
    b = edgecompile.build(tiny_dir, target="cpu", backend="openvino", precision="int8", config=cfg,
                          output=tmp_path / "ov-dyn")
    q = next(p for p in b.manifest["passes"] if p["name"] == "quantize")
    assert q["modified"] and q["options"]["mode"] == "dynamic"
    opts = b.manifest["backend_options"]
    assert opts["config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "16"
    assert opts["applied_at_build"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 16
    xml = (b.path / "model.xml").read_text()
    assert "FakeQuantize" not in xml and 'element_type="u8"' in xml
    fp32 = edgecompile.build(tiny_dir, target="cpu", backend="openvino", precision="fp32", output=tmp_path / "f")
    assert (b.path / "model.bin").stat().st_size < (fp32.path / "model.bin").stat().st_size
    with load(b.path) as runner:
        emb = runner.encode(TEXTS)
    assert emb.shape == (3, 32) and _cos_min(emb, _torch_embed(tiny_dir, TEXTS)) > 0.99


def test_int8_text_bundle_records_the_smoothing(tiny_dir, tmp_path):
    """Dynamic INT8 on ORT smooths the LayerNorm outputs feeding Attention and the first FFN MatMul of
    each layer (2 layers -> 4 groups) from the calibration split, and the manifest says so."""
    import edgecompile
    from edgecompile.compiler.config import Config

    cfg = Config().with_overrides({"passes.quantize.mode": "dynamic", "build.force": True})
    b = edgecompile.build(tiny_dir, target="cpu", backend="ort", precision="int8", config=cfg,
                          output=tmp_path / "int8")
    q = next(p for p in b.manifest["passes"] if p["name"] == "quantize")
    assert q["options"]["smoothing"]["alpha"] == 0.5
    assert q["options"]["smoothing"]["smoothed"] == 4 and q["options"]["smoothing"]["mul_inserted"] == 4
    assert "Mul" in _ops(b) and "QAttention" in _ops(b)


def test_int8_of_a_text_model_is_dynamic_unless_asked(tiny_dir, tmp_path):
    """`--precision int8` with no --quantize on a token-id model: dynamic INT8 (the mode the build resolved
    is the one the manifest records); an explicit `--quantize static` is kept."""
    import edgecompile
    from edgecompile.compiler.config import Config

    b = edgecompile.build(tiny_dir, target="cpu", backend="ort", precision="int8", force=True,
                          output=tmp_path / "auto")
    q = next(p for p in b.manifest["passes"] if p["name"] == "quantize")
    assert q["options"]["mode"] == "dynamic"
    b = edgecompile.build(tiny_dir, target="cpu", backend="ort", precision="int8", force=True,
                          config=Config().with_overrides({"passes.quantize.mode": "static"}), output=tmp_path / "s")
    q = next(p for p in b.manifest["passes"] if p["name"] == "quantize")
    assert q["options"]["mode"] == "static"
