"""ShapesNet training: CenterNet targets (Gaussian centre heatmaps, box regression at the centres),
penalty-reduced focal loss + L1, AdamW with a one-cycle schedule, horizontal flips. Its source is
part of the key of the committed weights (models/shapes/weights.npz): change it and they retrain."""
from __future__ import annotations

import numpy as np

from .dataset import EPOCHS, SEED, _images, normalise


def targets(labels: np.ndarray, num_classes: int, stride: int, size_unit: float, grid: int):
    """CenterNet training targets: Gaussian centre heatmaps, box (w, h, dx, dy) and its mask."""
    n = len(labels)
    heat = np.zeros((n, num_classes, grid, grid), np.float32)
    box = np.zeros((n, 4, grid, grid), np.float32)
    mask = np.zeros((n, 1, grid, grid), np.float32)
    yy, xx = np.mgrid[0:grid, 0:grid]
    for i in range(n):
        for x1, y1, x2, y2, c in labels[i]:
            if c < 0:
                continue
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            ix, iy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            sigma = max((x2 - x1) / stride, (y2 - y1) / stride) / 6 + 0.25
            g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma * sigma))
            heat[i, int(c)] = np.maximum(heat[i, int(c)], g)
            box[i, :, iy, ix] = [(x2 - x1) / size_unit, (y2 - y1) / size_unit, cx - ix, cy - iy]
            mask[i, 0, iy, ix] = 1.0
    return heat, box, mask


def train(model, epochs: int = EPOCHS, progress=None) -> None:
    import torch

    from edgecompile.compiler.training import deterministic

    from .data import CLASSES, IMG
    from .model import SIZE_UNIT, STRIDE

    a = _images()
    images, labels = a["images_train"], a["labels_train"]
    heat_t, box_t, mask_t = (
        torch.from_numpy(t) for t in targets(labels, len(CLASSES), STRIDE, SIZE_UNIT, IMG // STRIDE)
    )
    x_all = torch.from_numpy(normalise(images))
    with deterministic(SEED):
        gen = torch.Generator().manual_seed(SEED)
        steps = epochs * -(-len(x_all) // 64)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x_all), generator=gen).split(64):
                x = x_all[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5          # horizontal flip augmentation
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                ht = torch.where(flip[:, None, None, None], heat_t[idx].flip(3), heat_t[idx])
                bt, mt = box_t[idx], mask_t[idx]
                bt = torch.where(flip[:, None, None, None], _flip_box(bt), bt)
                mt = torch.where(flip[:, None, None, None], mt.flip(3), mt)
                out = model(x)
                loss = _loss(out, ht, bt, mt, len(CLASSES))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()


def _flip_box(b):
    """Box targets under a horizontal flip: cells mirror, dx -> 1 - dx (w, h, dy unchanged)."""
    import torch

    f = b.flip(3).clone()
    f[:, 2] = torch.where(f[:, 0] > 0, 1.0 - f[:, 2], f[:, 2])
    return f


def _loss(out, heat_t, box_t, mask_t, c: int):
    """CenterNet: penalty-reduced focal loss on the heatmaps + L1 on (w, h, dx, dy) at the centres."""
    import torch

    p = out[:, :c].clamp(1e-4, 1 - 1e-4)
    pos = heat_t.eq(1).float()
    neg = 1 - pos
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p ** 2 * (1 - heat_t) ** 4 * neg).sum()
    npos = pos.sum().clamp(min=1)
    focal = -(pos_loss + neg_loss) / npos
    l1 = (torch.abs(out[:, c:] - box_t) * mask_t).sum() / npos
    return focal + l1
