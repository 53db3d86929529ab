"""Malformed manifests: every one is a BundleError naming the field (never another exception), and
`edgecompile verify` exits 1 with a one-line reason."""
from __future__ import annotations

import copy

import pytest

import edgecompile.runtime as runtime
from edgecompile.errors import BundleError
import sechelpers
from sechelpers import assert_one_line_error, read_manifest, run_cli, write_manifest

tiny_onnx, tiny_bundle, bundle = sechelpers.tiny_onnx, sechelpers.tiny_bundle, sechelpers.bundle   # fixtures


def _art(m):
    return next(iter(m["artifacts"]))


def _set(path, value):
    def mutate(m):
        node = m
        for key in path[:-1]:
            node = node[key(m) if callable(key) else key]
        last = path[-1]
        node[last(m) if callable(last) else last] = value
    return mutate


def _delete(*path):
    def mutate(m):
        node = m
        for key in path[:-1]:
            node = node[key(m) if callable(key) else key]
        del node[path[-1](m) if callable(path[-1]) else path[-1]]
    return mutate


CASES = {
    "artifacts-list": (_set(["artifacts"], ["model.onnx"]), "'artifacts'"),
    "artifacts-empty": (_set(["artifacts"], {}), "'artifacts'"),
    "artifact-no-sha256": (_delete("artifacts", _art, "sha256"), ".sha256"),
    "artifact-sha256-short": (_set(["artifacts", _art, "sha256"], "abc"), ".sha256"),
    "artifact-sha256-int": (_set(["artifacts", _art, "sha256"], 12), ".sha256"),
    "artifact-info-string": (_set(["artifacts", _art], "model"), "artifacts['model.onnx']"),
    "artifact-size-negative": (_set(["artifacts", _art, "size"], -5), ".size"),
    "artifact-role-list": (_set(["artifacts", _art, "role"], ["model"]), ".role"),
    "inputs-string": (_set(["inputs"], "x"), "'inputs'"),
    "outputs-dict": (_set(["outputs"], {"name": "y"}), "'outputs'"),
    "input-spec-not-object": (_set(["inputs", 0], "x"), "inputs[0]"),
    "input-no-shape": (_delete("inputs", 0, "shape"), "inputs[0].shape"),
    "input-shape-float-dim": (_set(["inputs", 0, "shape"], [1.5, 4]), "inputs[0].shape"),
    "input-shape-too-deep": (_set(["inputs", 0, "shape"], [1] * 40), "inputs[0].shape"),
    "input-bogus-dtype": (_set(["inputs", 0, "dtype"], "float33"), "inputs[0].dtype"),
    "input-no-name": (_delete("inputs", 0, "name"), "inputs[0].name"),
    "output-duplicate-name": (lambda m: m["outputs"].append(dict(m["outputs"][0])), "outputs[1].name"),
    "backend-int": (_set(["backend"], 3), "'backend'"),
    "backend-path": (_set(["backend"], "../../evil"), "'backend'"),
    "backend-missing": (_delete("backend"), "'backend'"),
    "schema-version-string": (_set(["schema_version"], "1"), "schema_version"),
    "schema-version-bool": (_set(["schema_version"], True), "schema_version"),
    "schema-version-zero": (_set(["schema_version"], 0), "schema_version"),
    "schema-version-future": (_set(["schema_version"], 99), "newer than this runtime"),
    "measured-on-string": (_set(["measured_on"], "garbage"), "'measured_on'"),
    "measured-on-cpu-list": (_set(["measured_on", "cpu"], [1, 2]), "measured_on.cpu"),
    "measured-on-flags-string": (_set(["measured_on", "cpu", "flags"], "avx2"), "measured_on.cpu.flags"),
    "bundle-id-int": (_set(["bundle_id"], 7), "'bundle_id'"),
    "backend-options-list": (_set(["backend_options"], [1]), "'backend_options'"),
    "backend-options-config-nested": (_set(["backend_options"], {"config": {"A": {"b": 1}}}),
                                      "backend_options.config.A"),
    "frontend-kind-missing": (_set(["frontend"], {"vocab": "x"}), "frontend.kind"),
    "artifact-path-absolute": (lambda m: m["artifacts"].update({"/etc/passwd": m["artifacts"][_art(m)]}),
                               "escapes the bundle"),
    "artifact-path-dotdot": (lambda m: m["artifacts"].update({"../x.onnx": m["artifacts"][_art(m)]}),
                             "escapes the bundle"),
    "artifact-path-backslash": (lambda m: m["artifacts"].update({"a\\..\\b": m["artifacts"][_art(m)]}),
                                "escapes the bundle"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_field_is_bundle_error_naming_it(bundle, case):
    mutate, expected = CASES[case]
    m = copy.deepcopy(read_manifest(bundle))
    mutate(m)
    write_manifest(bundle, m)
    with pytest.raises(BundleError) as info:
        runtime.load(bundle)
    assert expected in info.value.message, info.value.message


@pytest.mark.parametrize("raw, expected", [
    (b"[" * 200_000 + b"]" * 200_000, "nests 200000 levels deep"),
    (b'{"a": "' + b"x" * (17 << 20) + b'"}', "over the"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b"{not json", "not valid JSON"),
    (b'{"schema_version": 1, "k": "\xff\xfe"}', "not valid JSON"),
    (b"", "not valid JSON"),
], ids=["deep-nesting", "oversized", "array", "syntax", "bad-utf8", "empty"])
def test_unparseable_manifest(bundle, raw, expected):
    (bundle / "manifest.json").write_bytes(raw)
    with pytest.raises(BundleError) as info:
        runtime.load(bundle)
    assert expected in info.value.message


def test_brackets_inside_strings_do_not_count_as_nesting(bundle):
    m = read_manifest(bundle)
    m["labels"] = ["[" * 1000 + "{" * 1000]
    write_manifest(bundle, m)
    runtime.load(bundle).close()


@pytest.mark.parametrize("case", ["artifacts-list", "input-no-shape", "measured-on-string", "backend-int"])
def test_verify_cli_checks_the_schema(bundle, case):
    mutate, expected = CASES[case]
    m = read_manifest(bundle)
    mutate(m)
    write_manifest(bundle, m)
    rc, out, err = run_cli("verify", bundle)
    assert_one_line_error(rc, out, err, codes=(1,), contains=expected)


def test_verify_cli_deep_nesting_is_one_line(bundle):
    (bundle / "manifest.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    rc, out, err = run_cli("verify", bundle)
    assert_one_line_error(rc, out, err, codes=(1,), contains="levels deep")


def test_valid_bundle_still_verifies_and_runs(bundle):
    import numpy as np

    rc, out, err = run_cli("verify", bundle)
    assert rc == 0, err
    with runtime.load(bundle) as r:
        y = r(np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(y, np.tile(np.arange(4, dtype=np.float32), (2, 1)))
