"""Hostile or malformed ONNX sources: each is a one-line error (exit 1 or 2), no traceback (also none from
libraries' loggers), no bundle written — refused before any pass or backend runs."""
from __future__ import annotations

import numpy as np
import pytest
from sechelpers import assert_one_line_error, run_cli, tiny_model


def _write(d, name, model_or_bytes):
    p = d / name
    p.write_bytes(model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString())
    return p


def _external_outside(d):
    from onnx.external_data_helper import set_external_data

    model = tiny_model()
    w = model.graph.initializer[0]
    (d.parent / "secret.bin").write_bytes(w.raw_data)
    set_external_data(w, location="../secret.bin", offset=0, length=len(w.raw_data))
    w.ClearField("raw_data")
    return model


CASES = {
    "opset-999": (lambda d: tiny_model(opset=999), "version 999 does not exist"),
    "unknown-domain-op": (lambda d: tiny_model(extra_domain="com.evil", node_domain="com.evil", op="Evil"),
                          "'com.evil' is not one ONNX Runtime knows"),
    "unknown-op": (lambda d: tiny_model(op="NoSuchOp"), "invalid ONNX model"),
    "undefined-input": (lambda d: tiny_model(bad_ref=True), "invalid ONNX model"),
    "garbage-bytes": (lambda d: b"\x08\x07\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage", "not a valid ONNX model"),
    "empty-file": (lambda d: b"", "empty"),
    "truncated": (lambda d: tiny_model().SerializeToString()[:40], "not a valid ONNX model"),
    "external-data-outside": (_external_outside, "invalid ONNX model"),
}


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "x.npz"
    np.savez(p, x=np.ones((4, 4), np.float32))
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_onnx_is_refused_in_one_line(tmp_path, npz, case):
    make, expected = CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    model = _write(src, "m.onnx", make(src))
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("build", model, "--data", npz, "--backend", "ort", "-o", out)
    assert_one_line_error(rc, stdout, stderr, contains=expected)
    assert not out.exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_declared_but_unused_domain_that_ort_loads_is_accepted(tmp_path, npz):
    """A model ONNX Runtime loads is never refused by the up-front check."""
    from edgecompile.compiler.validate import validate_onnx

    model = tiny_model(extra_domain="com.unused")
    path = _write(tmp_path, "m.onnx", model)
    validate_onnx(path, model)


def test_library_logs_stay_off_the_terminal_unless_verbose():
    import logging

    from edgecompile.compiler.validate import quiet_library_logs

    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            records.append(record)

    catch = Catch()
    logging.getLogger().addHandler(catch)
    try:
        quiet_library_logs(show=False)
        logging.getLogger("onnxslim.core").error("boom", exc_info=(ValueError, ValueError("x"), None))
        assert records == []
        quiet_library_logs(show=True)
        logging.getLogger("onnxslim.core").error("shown")
        assert [r.getMessage() for r in records] == ["shown"]
    finally:
        logging.getLogger().removeHandler(catch)
        quiet_library_logs(show=True)


def test_input_name_with_path_characters_is_never_a_path(tmp_path):
    """A graph input called '../../pwn' builds (cold start included) and nothing is written outside."""
    import edgecompile

    model = tiny_model()
    model.graph.input[0].name = "../../pwn"
    model.graph.node[0].input[0] = "../../pwn"
    src = _write(tmp_path, "m.onnx", model)
    data = tmp_path / "d.npz"
    np.savez(data, **{"../../pwn": np.ones((4, 4), np.float32)})
    before = set(tmp_path.parent.parent.iterdir())
    bundle = edgecompile.build(src, target="cpu", backend="ort", data=data, output=tmp_path / "out")
    assert bundle.manifest["inputs"][0]["name"] == "../../pwn"
    rep = bundle.report()
    assert "error" not in rep.get("cold_start", {}), rep.get("cold_start")
    assert set(tmp_path.parent.parent.iterdir()) == before
