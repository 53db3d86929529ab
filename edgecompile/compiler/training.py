"""Small, deterministic torch training loops shared by example models and module passes.

Imported only at build time (needs torch).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from edgecompile.data import Dataset


@contextmanager
def deterministic(seed: int = 0):
    """Seeded, single-threaded, deterministic torch: the same inputs give bit-identical weights."""
    threads = torch.get_num_threads()
    was_det = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_det)


def loader(ds: Dataset, batch_size: int, seed: int, input_name: str):
    """Shuffled (x, y) torch batches from a labelled numpy dataset."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))
    x = torch.from_numpy(ds.inputs[input_name])
    y = torch.from_numpy(ds.labels.astype(np.int64))
    for i in range(0, len(order), batch_size):
        idx = torch.from_numpy(order[i:i + batch_size])
        yield x[idx], y[idx]


def train_classifier(module: torch.nn.Module, ds: Dataset, *, epochs: int, lr: float = 3e-3,
                     batch_size: int = 64, seed: int = 0, weight_decay: float = 1e-4,
                     loss_fn: Callable | None = None, input_name: str | None = None) -> torch.nn.Module:
    """Train `module` with Adam + cross-entropy (or `loss_fn(module, x, y)`), cosine LR schedule."""
    input_name = input_name or next(iter(ds.inputs))
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(ds) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    module.train()
    for epoch in range(epochs):
        for x, y in loader(ds, batch_size, seed + epoch, input_name):
            opt.zero_grad()
            loss = loss_fn(module, x, y) if loss_fn else torch.nn.functional.cross_entropy(module(x), y)
            loss.backward()
            opt.step()
            sched.step()
    return module.eval()


@torch.no_grad()
def predict(module: torch.nn.Module, ds: Dataset, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run `module` over a dataset; returns {output_index: array} stacked (single output -> key 0)."""
    module.eval()
    outs = []
    for feeds in ds.batches(batch_size):
        y = module(*[torch.from_numpy(v) for v in feeds.values()])
        outs.append(y if isinstance(y, (tuple, list)) else (y,))
    return {i: torch.cat([o[i] for o in outs]).numpy() for i in range(len(outs[0]))}
