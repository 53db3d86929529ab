"""Regression example: a small MLP on scikit-learn's diabetes data (442 patients, shipped with
scikit-learn), trained in seconds.

Contract: input `input` float32 [N, 10], the ten baseline variables standardised with the training
split's mean and standard deviation (recorded in the manifest's preprocessing); output `prediction`
float32 [N, 1], disease progression one year later in the dataset's own units (about 25..346).
Fixed split (seed 0, 20 % test, 89 patients); task metric MSE (lower is better; bounds in
relative %), with MAE and R² reported beside it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np

from edgecompile.data import Dataset, TensorSpec
from edgecompile.source import TorchModelSource

from .._common import fingerprint, split_source

SEED = 0
TEST_SIZE = 0.2
EPOCHS = 30            # more epochs overfit the 353 training patients (test MSE rises)
HIDDEN = 32
_SPLIT_IN_CHILD = "EDGECOMPILE_PREPARING_DIABETES_SPLIT"
_HERE = Path(__file__).resolve().parent
_FILES = (_HERE / "__init__.py", _HERE / "model.py", _HERE.parent / "_common.py")
_KEYS = ("x_train", "y_train", "x_test", "y_test", "mean", "std")


@cache
def _arrays() -> dict[str, np.ndarray]:
    """The fixed split and the standardisation statistics, cached as .npz. Computed in a child
    process: importing scikit-learn in the build process changes torch.onnx's exported graph (see
    models/digits)."""
    from importlib.metadata import version

    from edgecompile.cache import content_key, subdir

    path = (
        subdir("data")
        / f"diabetes-{content_key('diabetes-split/v1', version('scikit-learn'), SEED, TEST_SIZE)[:24]}.npz"
    )
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in _KEYS}
        except Exception:
            pass                                             # unreadable: recompute and rewrite
    if os.environ.get(_SPLIT_IN_CHILD) != "1":
        proc = subprocess.run([sys.executable, "-c", "import edgecompile.models.diabetes as m; m._arrays()"],
                              env={**os.environ, _SPLIT_IN_CHILD: "1"}, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            raise RuntimeError("preparing the diabetes split failed: "
                               + (proc.stderr.strip().splitlines() or ["(no output)"])[-1])
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in _KEYS}
    arrays = _split()
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def _split() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True, scaled=False)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED)
    mean, std = x_tr.mean(0), x_tr.std(0)
    norm = lambda a: np.ascontiguousarray(((a - mean) / std).astype(np.float32))
    return {"x_train": norm(x_tr), "y_train": y_tr.astype(np.float32), "x_test": norm(x_te),
            "y_test": y_te.astype(np.float32), "mean": mean, "std": std}


def load_split(split: str) -> Dataset:
    a = _arrays()
    if split == "calibration":
        return Dataset("diabetes:calibration", {"input": a["x_train"][:256]}, a["y_train"][:256])
    return Dataset(f"diabetes:{split}", {"input": a[f"x_{split}"]}, a[f"y_{split}"])


def _train(model) -> None:
    import torch

    from edgecompile.compiler.training import deterministic

    ds = load_split("train")
    x = torch.from_numpy(ds.inputs["input"])
    y = torch.from_numpy(ds.labels)[:, None]
    mean, std = float(model.target_mean), float(model.target_std)
    with deterministic(SEED):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
        gen = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(EPOCHS):
            for idx in torch.randperm(len(x), generator=gen).split(32):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model.body(x[idx]), (y[idx] - mean) / std)
                loss.backward()
                opt.step()
    model.eval()


def create():
    """The trained DiabetesMLP (weights cached by definition hash, torch version, epochs, seed)."""
    from .._common import cached_module
    from .model import DiabetesMLP

    y = _arrays()["y_train"]
    mean, std = float(y.mean()), float(y.std())
    return cached_module("diabetes", (fingerprint(*_FILES), EPOCHS, SEED, HIDDEN),
                         lambda: DiabetesMLP(10, HIDDEN, mean, std), _train)


def source() -> TorchModelSource:
    a = _arrays()
    return split_source(
        "diabetes",
        create=create,
        inputs=[TensorSpec("input", ("batch", 10), "float32")],
        outputs=["prediction"],
        load_split=load_split,
        metric="mse",
        preprocessing={"layout": "NC", "standardize": {"mean": [round(float(v), 6) for v in a["mean"]],
                                                       "std": [round(float(v), 6) for v in a["std"]]},
                       "features": ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
                       "target": "disease progression one year after baseline"},
        fingerprint=fingerprint(*_FILES),
    )
