"""`edgecompile baseline` / `edgecompile check` on the real digits bundle and a deliberately broken build."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import run_cli
from edgecompile.errors import ConfigError, DataError
from edgecompile.verify.regression import check, load_baseline, make_baseline, save_baseline


def _junit(path):
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 2
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases)
    assert int(suite.get("skipped")) == sum(c.find("skipped") is not None for c in cases)
    assert int(suite.get("errors")) == 0 and float(suite.get("time")) >= 0
    assert all(c.get("classname") and c.get("name") for c in cases)
    return suite, {c.get("name"): c for c in cases}


def test_baseline_records_per_sample_results_data_and_latency(digits_bundle, digits_baseline, tmp_path):
    rc, out, err = run_cli("baseline", digits_bundle.path, "-o", tmp_path / "b.json")
    assert rc == 0, err
    assert "baseline written to" in out and "top1" in out and "digits:test" in out
    b = load_baseline(tmp_path / "b.json")
    mem, _ = digits_baseline
    assert b["data"]["sha256"] == digits_bundle.manifest["data"]["evaluation"]["sha256"] == mem["data"]["sha256"]
    assert b["data"]["identity"] == "digits:test" and b["data"]["n"] == len(b["per_sample"]) == 360
    assert set(b["per_sample"]) <= {0, 1} and b["metric"]["binary"] and b["metric"]["name"] == "top1"
    assert b["metric"]["value"] == pytest.approx(np.mean(b["per_sample"]))
    assert b["metric"]["value"] == pytest.approx(digits_bundle.report()["accuracy"]["candidate"])
    assert b["bundle"]["bundle_id"] == digits_bundle.bundle_id and b["latency_ms"]["p50"] > 0
    assert b["fingerprints"]["rounded_sha256"] == mem["fingerprints"]["rounded_sha256"]
    assert len(b["predictions"]) == 360


def test_check_passes_on_the_unchanged_bundle_with_junit_and_json(digits_bundle, digits_baseline, tmp_path):
    _, base_file = digits_baseline
    rc, out, err = run_cli(
        "check", digits_bundle.path, "--baseline", base_file, "--junit", tmp_path / "j.xml", "--json"
    )
    assert rc == 0, err
    verdict = json.loads(out)
    assert verdict["ok"] and verdict["failures"] == [] and verdict["accuracy"]["delta"] == 0
    assert verdict["accuracy"]["p_value"] >= 0.05 and verdict["fingerprints_match"] is True
    suite, cases = _junit(tmp_path / "j.xml")
    assert suite.get("failures") == "0" and suite.get("skipped") == "1"
    assert cases["latency"].find("skipped") is not None and cases["accuracy[top1]"].find("failure") is None


def test_rerunning_check_on_the_unchanged_bundle_passes_20_of_20(digits_bundle, digits_baseline):
    _, base_file = digits_baseline
    results = [check(digits_bundle.path, base_file, max_drop=0.0, max_latency_ratio=1.5) for _ in range(20)]
    assert [r.ok for r in results] == [True] * 20, [r.failures for r in results if not r.ok]
    assert all(r.latency["mode"].startswith("side by side") and r.latency["rounds"] == 15 for r in results)


def test_broken_build_fails_with_exit_3_table_junit_and_annotations(regressed_bundle, digits_baseline, tmp_path):
    _, base_file = digits_baseline
    junit = tmp_path / "out" / "junit.xml"
    rc, out, err = run_cli("check", regressed_bundle.path, "--baseline", base_file, "--junit", junit,
                           env={"GITHUB_ACTIONS": "true"})
    assert rc == 3, err
    assert "Traceback" not in err and err.startswith("error: accuracy regression: top1 dropped by")
    assert "::error title=edgecompile check%3A bundle::accuracy regression" in out
    for word in ("metric", "baseline", "candidate", "delta", "95% CI", "p-value", "FAIL", "lost"):
        assert word in out
    suite, cases = _junit(junit)
    failure = cases["accuracy[top1]"].find("failure")
    assert suite.get("failures") == "1" and failure is not None
    assert failure.get("type") == "AccuracyRegression" and "dropped by" in failure.get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["bundle_id"] == regressed_bundle.bundle_id


def test_verdict_of_the_broken_build_and_the_null_hypothesis(regressed_bundle, digits_baseline):
    base, _ = digits_baseline
    r = check(regressed_bundle.path, base, max_drop=1.0)
    assert not r.ok and r.accuracy_failed and r.paired and r.accuracy.p_value < 1e-6
    assert r.delta < -0.05 and r.accuracy.details["losses"] > r.accuracy.details["gains"]
    lo, hi = r.accuracy.ci
    assert lo <= r.accuracy.drop <= hi and r.fingerprints_match is False
    # H0 is "drop <= max_drop": a bound the observed drop is far from exceeding is not a failure
    loose = check(regressed_bundle.path, base, max_drop=100 * (-r.delta) + 5.0)
    assert loose.ok and loose.accuracy.p_value > 0.5


def test_latency_gate_fails_when_the_ratio_is_exceeded(digits_bundle, digits_baseline):
    _, base_file = digits_baseline
    r = check(digits_bundle.path, base_file, max_latency_ratio=0.5)      # the same bundle is not 2x faster
    assert not r.ok and not r.accuracy_failed and r.latency_failed
    assert r.failures[0].startswith("latency regression:") and r.latency["p_value"] < 0.05


def test_latency_against_a_recorded_baseline_when_its_bundle_is_gone(digits_bundle, bundle_copy, tmp_path):
    base = make_baseline(bundle_copy)
    shutil.rmtree(bundle_copy)
    r = check(digits_bundle.path, base, max_latency_ratio=50.0)
    assert r.ok and r.latency["mode"].startswith("against the recorded") and r.latency["ratio"] > 0


def test_data_mismatch_is_exit_2_unless_data_is_given(digits_bundle, digits_baseline, tmp_path):
    base, _ = digits_baseline
    tampered = json.loads(json.dumps(base))
    tampered["data"]["sha256"] = "0" * 64
    save_baseline(tampered, tmp_path / "tampered.json")
    rc, _, err = run_cli("check", digits_bundle.path, "--baseline", tmp_path / "tampered.json")
    assert rc == 2 and "differ from the baseline's" in err and "hint:" in err and "Traceback" not in err
    # other data on purpose: compared unpaired, with a note
    ds_half = tmp_path / "half.npz"
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.verify.gate_data import bundle_dataset

    ds = bundle_dataset(Bundle.open(digits_bundle.path))
    np.savez(ds_half, input=ds.inputs["input"][:200], labels=ds.labels[:200])
    r = check(digits_bundle.path, base, data=ds_half)
    assert r.ok and not r.paired and "unpaired" in r.accuracy.method and r.n == 200
    assert any("unpaired" in n for n in r.notes)


def test_bad_baseline_and_options_are_exit_2(digits_bundle, digits_baseline, tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    rc, _, err = run_cli("check", digits_bundle.path, "--baseline", tmp_path / "junk.json")
    assert rc == 2 and "not valid JSON" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="does not exist"):
        check(digits_bundle.path, tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"kind": "something"}')
    with pytest.raises(ConfigError, match="not an edgecompile baseline"):
        check(digits_bundle.path, tmp_path / "other.json")
    rc, _, err = run_cli("check", digits_bundle.path, "--baseline", digits_baseline[1], "--max-drop", "-1")
    assert rc == 2 and "--max-drop" in err and "Traceback" not in err


def test_onnx_bundle_needs_its_data_file_and_label_free_agreement(regressed_bundle, digits_bundle, digits_test_npz,
                                                                  tmp_path):
    # the broken bundle was evaluated on a .npz, which it does not keep: baseline needs --data
    with pytest.raises(DataError, match="not kept in the bundle"):
        make_baseline(regressed_bundle.path)
    base = make_baseline(regressed_bundle.path, data=digits_test_npz, measure_latency=False)
    assert base["data"]["identity"] == "file:digits-test.npz" and base["latency_ms"] is None
    assert check(regressed_bundle.path, base).ok                 # path remembered, same sha: paired
    # without labels a classifier is scored on agreement with the baseline's predictions
    unlabeled = tmp_path / "unlabeled.npz"
    with np.load(digits_test_npz) as z:
        np.savez(unlabeled, input=z["input"])
    ref = make_baseline(digits_bundle.path, data=unlabeled, measure_latency=False)
    assert ref["metric"]["name"] == "confident_agreement" and ref["metric"]["value"] == 1.0
    assert check(digits_bundle.path, ref).ok
    r = check(regressed_bundle.path, ref)
    assert not r.ok and r.metric == "confident_agreement" and r.candidate_value < 0.95


def test_baseline_and_check_import_no_torch(digits_bundle, digits_baseline, tmp_path):
    """CI runners that only check bundles need no torch: bound digits data come from scikit-learn
    (or, once split, from the cached arrays in EDGECOMPILE_CACHE/data, which needs neither)."""
    import subprocess
    import sys

    code = ("import sys\nfrom edgecompile.verify.regression import check\n"
            f"r = check({str(digits_bundle.path)!r}, {str(digits_baseline[1])!r})\n"
            "assert r.ok\nimport edgecompile.verify.pytest_plugin, edgecompile.verify.verdict\n"
            "print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    mods = {m.split(".")[0] for m in out.split()}
    assert "edgecompile" in mods and not mods & {"torch", "tvm", "openvino", "tensorrt", "onnx"}


def test_latency_gate_against_another_cpu_needs_allow_other_machine(digits_bundle, digits_baseline, tmp_path):
    from edgecompile.errors import ConfigError

    base, _ = digits_baseline
    other = json.loads(json.dumps(base))
    other["machine"] = "Some Other CPU @ 1.0GHz"
    with pytest.raises(ConfigError, match="Some Other CPU.*not comparable"):
        check(digits_bundle.path, other, max_latency_ratio=50.0)
    save_baseline(other, tmp_path / "other.json")
    rc, _, err = run_cli("check", digits_bundle.path, "--baseline", tmp_path / "other.json",
                         "--max-latency-ratio", "50")
    assert rc == 2 and "--allow-other-machine" in err and "Traceback" not in err
    assert check(digits_bundle.path, other, max_latency_ratio=50.0, allow_other_machine=True).ok
    assert check(digits_bundle.path, other).ok          # accuracy-only checks do not care where latency was measured
