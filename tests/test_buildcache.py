"""The content-addressed build cache and reproducible bundles (issue #4, items 2, 4 and 5)."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from edgecompile.compiler.buildcache import ENTRY, StageCache


# -- StageCache unit tests (no builds) ------------------------------------------------------------

def _fill(d):
    (d / "a.bin").write_bytes(b"alpha")
    (d / "sub").mkdir()
    (d / "sub" / "b.txt").write_text("beta")


KEY = "0123abcd" * 8


def test_put_get_roundtrip_is_atomic(tmp_path):
    store = StageCache(tmp_path)
    assert store.get("export", KEY) is None
    entry = store.put("export", KEY, _fill)
    assert entry == store.get("export", KEY) == tmp_path / "stages" / "export" / KEY
    assert (entry / "sub" / "b.txt").read_text() == "beta"
    assert json.loads((entry / ENTRY).read_text())["files"].keys() == {"a.bin", "sub/b.txt"}

    def failing(d):
        (d / "half").write_bytes(b"x")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        store.put("export", "ff" * 32, failing)
    assert store.get("export", "ff" * 32) is None
    assert sorted(p.name for p in (tmp_path / "stages" / "export").iterdir()) == [KEY]   # no tmp leftovers


@pytest.mark.parametrize("corrupt", [
    lambda e: (e / "a.bin").write_bytes(b"alphA"),                 # flipped content
    lambda e: (e / "a.bin").unlink(),                              # missing file
    lambda e: (e / "extra").write_bytes(b"?"),                     # unlisted file
    lambda e: (e / ENTRY).write_text("{truncated"),                # broken index
    lambda e: (e / ENTRY).unlink(),                                # no index (half-deleted)
])
def test_corrupted_entry_is_a_miss_and_removed(tmp_path, corrupt):
    store = StageCache(tmp_path)
    entry = store.put("bundle", KEY, _fill)
    corrupt(entry)
    assert store.get("bundle", KEY) is None and not entry.exists()
    assert store.put("bundle", KEY, _fill) is not None and store.get("bundle", KEY) is not None


def test_disabled_and_unwritable_cache_never_fail(tmp_path):
    assert StageCache(tmp_path, enabled=False).put("bundle", KEY, _fill) is None
    assert not (tmp_path / "stages").exists()
    (tmp_path / "file").write_text("x")
    assert StageCache(tmp_path / "file").put("bundle", KEY, _fill) is None     # cache dir under a file
    with pytest.raises(ValueError):
        StageCache(tmp_path).get("bundle", "../../etc")


# -- keys: every input that changes the output changes the key --------------------------------------

@pytest.fixture(scope="module")
def base_plan(tmp_path_factory):
    from edgecompile.compiler.config import Config
    from edgecompile.compiler.pipeline import make_plan

    out = tmp_path_factory.mktemp("plans") / "b"
    return make_plan(Config().with_overrides({"model.source": "models/digits"}), output=out, data=None, options={})


def _plan(base, tmp_path, data=None, **overrides):
    from edgecompile.compiler.pipeline import make_plan

    cfg = base.config.with_overrides(overrides)
    return make_plan(cfg, output=tmp_path / "b", data=data, options={})


def test_bundle_key_misses_when_any_one_input_changes(base_plan, tmp_path, monkeypatch):
    from edgecompile.compiler import plan as pipeline
    from edgecompile.targets.profiles import get_profile

    key = pipeline.bundle_key(base_plan)
    assert key == pipeline.bundle_key(_plan(base_plan, tmp_path))           # same inputs, same key
    variants = {
        "precision": _plan(base_plan, tmp_path, **{"build.precision": "int8"}),
        "threads": _plan(base_plan, tmp_path, **{"build.threads": 1}),
        "data slice": _plan(base_plan, tmp_path, **{"data.evaluation": "digits:test[:100]"}),
        "calibration": _plan(base_plan, tmp_path, **{"data.calibration": "digits:train[:128]"}),
        "pass option": _plan(base_plan, tmp_path, **{"passes.quantize.calib_samples": 128}),
        "prune option": _plan(base_plan, tmp_path, **{"passes.prune.ratio": 0.25}),
        "report formats": _plan(base_plan, tmp_path, **{"report.formats": ["json"]}),
        "target": dataclasses.replace(base_plan, profile=get_profile("rpi4"), backend="tvm"),
        "backend": dataclasses.replace(base_plan, backend="openvino"),
        "model content": dataclasses.replace(
            base_plan, source=dataclasses.replace(base_plan.source, fingerprint="0" * 64)),
    }
    keys = {name: pipeline.bundle_key(p) for name, p in variants.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(keys), keys
    monkeypatch.setattr(pipeline, "toolchain_versions", lambda: {"onnxruntime": "0.0.1"})
    assert pipeline.bundle_key(base_plan) != key                           # a toolchain upgrade misses
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda: "edited")
    assert pipeline.bundle_key(base_plan) != key                           # edited EdgeCompile code misses
    monkeypatch.undo()
    assert pipeline.bundle_key(base_plan) == key
    other = {**pipeline.machine_info(), "cpu": {"model": "Cortex-A76", "arch": "aarch64", "cores": 4, "flags": []}}
    monkeypatch.setattr(pipeline, "machine_info", lambda: other)
    assert pipeline.bundle_key(base_plan) != key                           # a shared cache, another machine


def test_export_key_covers_what_changes_the_graph_only(base_plan, tmp_path):
    from edgecompile.compiler.plan import export_key
    from edgecompile.targets.profiles import get_profile

    key = export_key(base_plan)
    same = [_plan(base_plan, tmp_path, **{"build.threads": 1}), _plan(base_plan, tmp_path, **{"build.strict": True}),
            _plan(base_plan, tmp_path, **{"report.formats": ["json"]}),
            _plan(base_plan, tmp_path, **{"build.precision": "int8"}),           # static int8: same FP32 export
            _plan(base_plan, tmp_path, **{"passes.quantize.max_accuracy_drop": 1.0,     # PTQ settings: the
                                          "passes.quantize.calibrate": "minmax"}),    # precision stage's
            dataclasses.replace(base_plan, backend="openvino")]                  # same device, another engine
    assert all(export_key(p) == key for p in same)
    different = [_plan(base_plan, tmp_path, **{"passes.prune.ratio": 0.5}),
                 _plan(base_plan, tmp_path, **{"data.evaluation": "digits:test[:100]"}),
                 _plan(base_plan, tmp_path, **{"build.precision": "int8", "passes.quantize.mode": "qat"}),
                 _plan(base_plan, tmp_path, **{"build.precision": "int8", "passes.quantize.mode": "qat",
                                               "passes.quantize.calibrate": "minmax"}),     # QAT: the export's
                 dataclasses.replace(base_plan, profile=get_profile("rpi4"), backend="tvm"),
                 dataclasses.replace(base_plan, source=dataclasses.replace(base_plan.source, fingerprint="1" * 64))]
    keys = [export_key(p) for p in different]
    assert key not in keys and len(set(keys)) == len(keys)


def test_onnx_file_content_changes_the_key(digits_bundle, tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgecompile.compiler.config import Config
    from edgecompile.compiler.pipeline import bundle_key, make_plan

    src = tmp_path / "m.onnx"
    shutil.copy(digits_bundle.path / "model.onnx", src)
    npz = tmp_path / "d.npz"
    np.savez(npz, input=np.zeros((4, 1, 8, 8), np.float32))
    plan = lambda: make_plan(Config().with_overrides({"model.source": str(src)}), output=tmp_path / "o",  # noqa: E731
                             data=npz, options={})
    k1 = bundle_key(plan())
    m = onnx.load(src)
    w = m.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + 1, w.name))
    onnx.save(m, src)                                                   # same path, new content
    assert bundle_key(plan()) != k1


def test_python_api_options_bypass_the_cache(base_plan):
    from edgecompile.compiler.plan import cache_state

    assert cache_state(base_plan) == "on"
    assert cache_state(dataclasses.replace(base_plan, use_cache=False)) == "off (--no-cache)"
    assert cache_state(dataclasses.replace(base_plan, options={"finetune": print})).startswith("off (Python-API")


# -- end to end -----------------------------------------------------------------------------------------

def test_identical_rebuild_is_a_cache_hit(digits_bundle, tmp_path):
    """`digits_bundle` stored its build in the session cache; the same build through the real CLI is a hit."""
    rc, out, err = run_cli("build", "models/digits", "--target", "cpu", "--backend", "ort", "-o", tmp_path / "again",
                           "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["cache"]["bundle"] == "hit" and rep["bundle_id"] == digits_bundle.bundle_id
    for name in ("manifest.json", "model.onnx"):
        assert (tmp_path / "again" / name).read_bytes() == (digits_bundle.path / name).read_bytes()
    assert set(rep["steps_seconds"]) == {"cache"}                     # nothing was recomputed
    assert rep["cache"]["original_build_seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["manifest.json", "model.onnx",
                                                                     "report.json", "report.md"]
    rc, out, _ = run_cli("verify", tmp_path / "again", "--json")
    assert rc == 0 and json.loads(out)["ok"]


def test_flags_override_config_keys_end_to_end(digits_bundle, tmp_path, monkeypatch):
    """./edgecompile.toml sets threads=1 and report formats; --threads 2 wins over its key; the
    effective config is in the manifest. A changed config misses the bundle cache but reuses the export."""
    import edgecompile
    from edgecompile.cli.main import main

    (tmp_path / "edgecompile.toml").write_text(
        "[model]\nsource = 'digits'\n[build]\nbackend = 'ort'\nthreads = 1\nprecision = 'fp32'\n"
        "[report]\nformats = ['json']\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["-q", "build", "--threads", "2", "-o", "out"])
    assert exc.value.code == 0
    b = edgecompile.Bundle.open(tmp_path / "out")
    cfg = b.manifest["config"]
    assert cfg["build"]["threads"] == 2 and cfg["report"]["formats"] == ["json"] and cfg["build"]["precision"] == "fp32"
    assert not (tmp_path / "out" / "report.md").exists()
    rep = b.report()
    assert rep["latency_ms"]["threads"] == 2
    assert rep["cache"]["bundle"] == "miss" and rep["cache"]["export"] == "hit"
    assert b.bundle_id != digits_bundle.bundle_id
    # the export served from the cache gives the same graph bytes as a fresh export
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (digits_bundle.path / "model.onnx").read_bytes()


def test_corrupted_bundle_entry_is_rebuilt(digits_bundle, tmp_path):
    from edgecompile.compiler.config import Config
    from edgecompile.compiler.pipeline import build, bundle_key, make_plan

    cfg = Config().with_overrides({"model.source": "models/digits", "build.backend": "ort", "build.threads": 1})
    key = bundle_key(make_plan(cfg, output=tmp_path / "a", data=None, options={}))
    first = build(config=cfg, output=tmp_path / "a")
    entry = StageCache().get("bundle", key)
    assert entry is not None and first.report()["cache"]["bundle"] in ("miss", "hit")
    p = entry / "model.onnx"
    p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1]))   # bit rot in the cache
    second = build(config=cfg, output=tmp_path / "b")
    assert second.report()["cache"]["bundle"] == "miss"              # not served, rebuilt
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    assert StageCache().get("bundle", key) is not None               # and stored again, intact


def test_no_cache_rebuild_from_scratch_is_byte_identical(digits_bundle, tmp_path):
    """A fresh cache (weights retrained, export redone) with --no-cache reproduces the session's bundle:
    same bundle_id, byte-identical manifest.json and model.onnx; and --no-cache wrote no cache entry."""
    fresh = tmp_path / "fresh-cache"
    rc, out, err = run_cli("build", "models/digits", "--backend", "ort", "-o", tmp_path / "b", "--no-cache", "--json",
                           env={"EDGECOMPILE_CACHE": str(fresh)})
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["cache"] == {"bundle": "off (--no-cache)", "export": "off (--no-cache)", "key": None}
    assert rep["bundle_id"] == digits_bundle.bundle_id
    for name in ("manifest.json", "model.onnx"):
        assert (tmp_path / "b" / name).read_bytes() == (digits_bundle.path / name).read_bytes(), name
    assert (fresh / "models").is_dir() and not (fresh / "stages").exists()
