"""`--annotations gt.json`: COCO-style ground truth for evaluating a third-party ONNX detector.

The i-th entry of the file's "images" list describes the i-th sample of the `--data` .npz; boxes are
COCO [x, y, w, h] in the model input's pixels. The detector's first output must be end-to-end
detections [N, K, 6]: x1, y1, x2, y2, score, category_id (the file's ids; rows with a score <= 0 or an
unknown id are padding), i.e. decoding and NMS in the graph. The metric becomes `map`.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecompile.errors import ConfigError, DataError

HINT = ('a COCO-style JSON: {"images": [...], "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h]}], '
        '"categories": [{"id", "name"}]}')


def load_annotations(path: str | Path, n_samples: int) -> tuple[np.ndarray, dict]:
    """(labels [N, B, 5] float32, decoding spec) from a COCO-style ground-truth file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotations file {str(path)!r} does not exist", hint="pass an existing gt.json")
    try:
        gt = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc.__class__.__name__}: {exc})", hint=HINT) from None
    if not isinstance(gt, dict) or not all(
        isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(f"{path}: needs lists 'images', 'annotations' and 'categories'", hint=HINT)
    images, cats = gt["images"], gt["categories"]
    if len(images) != n_samples:
        raise DataError(f"{path}: {len(images)} images, but the data have {n_samples} samples",
                        hint="the i-th entry of 'images' must describe the i-th sample of --data")
    try:
        index = {int(im["id"]): i for i, im in enumerate(images)}
        cat_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: every image and category needs an integer 'id'", hint=HINT) from None
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    per_image: list[list[list[float]]] = [[] for _ in images]
    for a in gt["annotations"]:
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            i, k = index[int(a["image_id"])], cat_index[int(a["category_id"])]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: annotation {a.get('id', '?')!r} has no valid bbox/image_id/category_id",
                            hint=HINT) from None
        if a.get("iscrowd"):
            raise DataError(
                f"{path}: crowd annotations (iscrowd=1) are not supported", hint="drop them or set iscrowd 0"
            )
        per_image[i].append([x, y, x + w, y + h, float(k)])
    width = max(1, max(len(b) for b in per_image))
    labels = np.full((len(images), width, 5), -1.0, np.float32)
    for i, boxes in enumerate(per_image):
        if boxes:
            labels[i, :len(boxes)] = boxes
    spec = {"kind": "detection", "decode": "boxes", "classes": names, "category_ids": cat_ids,
            "score_threshold": 0.0, "max_detections": 100, "annotations": path.name}
    return labels, spec


def bind_annotations(source, evaluation, path):
    """The source with metric `map` and the evaluation data with boxes (labels) and the decoding spec."""
    if source.kind != "onnx":
        raise ConfigError("--annotations applies to .onnx detectors (built-in models bind their own boxes)",
                          hint="drop --annotations, or pass a .onnx model with --data images.npz")
    if evaluation is None:
        raise DataError("--annotations needs the images: pass --data images.npz", hint="arrays named after the inputs")
    labels, spec = load_annotations(path, len(evaluation))
    ds = replace(evaluation, labels=labels, meta={**evaluation.meta, "detection": spec}, _sha=None)
    return replace(source, metric="map"), ds


