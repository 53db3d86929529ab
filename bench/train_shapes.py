"""Full training of the shapes detector (models/shapes): writes models/shapes/weights.npz, the
weights `edgecompile.models.shapes.create()` loads while their key matches the network, data
generator and training code (otherwise it trains itself, in $EDGECOMPILE_CACHE).

    python bench/train_shapes.py            # minutes on 2 cores; prints the FP32 test mAP

Deterministic (fixed seeds, torch deterministic mode): the same torch version reproduces the file.
"""
from __future__ import annotations

import time

import numpy as np


def main() -> None:
    import torch
    from edgecompile.models import shapes
    from edgecompile.models.shapes.model import ShapesNet
    from edgecompile.models.shapes.training import train

    from edgecompile.verify.detection import evaluate_detections

    t0 = time.perf_counter()
    shapes._images()
    t_data = time.perf_counter() - t0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)                   # as models/_common.cached_module seeds the initial weights
        model = ShapesNet()
    t1 = time.perf_counter()
    train(model)
    t_train = time.perf_counter() - t1
    path = shapes.save_weights(model)
    ds = shapes.load_split("test")
    with torch.no_grad():
        out = model(torch.from_numpy(ds.inputs["input"])).numpy()
    res = evaluate_detections(out, ds.labels, shapes.frontend_spec(), n_boot=0)
    print(f"data {t_data:.1f} s, training {t_train:.1f} s ({shapes.EPOCHS} epochs, {shapes.N_TRAIN} images)")
    print(f"test ({res['images']} images): mAP@[.5:.95] {res['map']:.4f}, mAP@.5 {res['map50']:.4f}; "
          + ", ".join(f"{r['class']} AP {r['ap']:.3f}" for r in res["per_class"]))
    print(f"wrote {path} (key {shapes.training_key()})")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
