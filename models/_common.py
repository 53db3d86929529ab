"""Helpers shared by the example model packages: cached weights, synthetic image data."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np


def split_source(name: str, *, splits=("train", "calibration", "test"), **fields):
    """The TorchModelSource of an example whose data splits load as NAME:SPLIT: calibrates on
    NAME:calibration, evaluates on NAME:test, trains (QAT, distillation) on NAME:train."""
    from edgecompile.source import TorchModelSource

    return TorchModelSource(name=name, splits=tuple(splits), default_calibration=f"{name}:calibration",
                            default_evaluation=f"{name}:test", train_split="train", **fields)


def fingerprint(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def cached_module(name: str, key_parts: tuple, make: Callable[[], object], prepare: Callable[[object], None]):
    """`make()` a module; load its weights from the cache, or `prepare(module)` (train, calibrate BN)
    and save them. The key covers the definition, the torch version and `key_parts`."""
    import torch

    from edgecompile.cache import content_key, subdir

    key = content_key(name, torch.__version__, *key_parts)[:24]
    path = subdir("models") / f"{name}-{key}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)              # the initial weights are part of the definition: seed them
        module = make()
    if path.is_file():
        module.load_state_dict(torch.load(path, weights_only=True))
        return module.eval()
    prepare(module)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(module.state_dict(), tmp)
    tmp.replace(path)
    return module.eval()


def reestimate_batchnorm(module, batches: int = 8, batch_size: int = 16, shape=(3, 224, 224), seed: int = 0) -> None:
    """Random weights give degenerate activations; re-estimating BatchNorm statistics on random
    inputs (cumulative average) keeps every layer's activations at a sensible scale."""
    import torch

    from edgecompile.compiler.training import deterministic

    with deterministic(seed), torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        module.train()
        gen = torch.Generator().manual_seed(seed + 1)
        for _ in range(batches):
            module(torch.randn((batch_size, *shape), generator=gen))
        module.eval()


def synthetic_images(n: int, seed: int, shape=(3, 224, 224)) -> np.ndarray:
    """Smooth random images (normalised like ImageNet inputs): clearly synthetic, not noise-only."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    low = rng.standard_normal((n, c, h // 16, w // 16)).astype(np.float32)
    img = np.repeat(np.repeat(low, 16, axis=2), 16, axis=3)
    img += 0.3 * rng.standard_normal((n, c, h, w)).astype(np.float32)
    return np.ascontiguousarray(img, dtype=np.float32)
