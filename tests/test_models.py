import subprocess
import sys

import numpy as np

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


def test_mobilenetv2_random_weights_are_not_degenerate():
    import torch

    from edgecompile.source import resolve_source

    src = resolve_source("mobilenetv2")
    ds = src.dataset("calibration").take(16)
    assert ds.synthetic and ds.labels is None and src.metric == "top1_agreement"
    with torch.no_grad():
        logits = src.module()(torch.from_numpy(ds.inputs["input"])).numpy()
    assert logits.shape == (16, 1000) and np.isfinite(logits).all()
    assert logits.std() > 1e-2                                # activations neither vanished nor exploded
    assert len(set(logits.argmax(1).tolist())) > 1            # not one constant class


def test_first_build_in_an_empty_cache_exports_the_same_graph_as_later_builds(tmp_path):
    """Preparing the example data in-process (scikit-learn) once changed torch.onnx's output; the first
    build in a fresh cache must give the same artifact bytes as a later --no-cache build."""
    from conftest import run_cli

    env = {"EDGECOMPILE_CACHE": str(tmp_path / "cache")}
    for out, extra in (("a", []), ("b", ["--no-cache"])):
        rc, _, err = run_cli("-q", "build", "digits", "--backend", "ort", "-o", tmp_path / out, *extra, env=env)
        assert rc == 0, err
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
