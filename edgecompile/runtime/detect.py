"""Detection front-end: `runner.detect(image)` for bundles whose manifest says
`frontend = {"kind": "detection", ...}`. numpy only (no torch, onnx or image libraries).

The manifest's front-end record fixes everything an app would otherwise have to guess:

    {"kind": "detection", "decode": "centernet", "input": "input", "output": "maps",
     "input_size": [H, W], "layout": "NCHW", "scale": 1/255, "mean": [...], "std": [...],
     "resize": "bilinear", "stride": 4, "size_unit": 16.0, "classes": [...],
     "score_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100, "peak_kernel": 3}

`detect` resizes the HWC uint8 RGB image to input_size, normalises it, runs the graph, decodes
heatmap peaks into boxes (centre + offset, width/height), applies class-wise NMS and maps the boxes
back to the original image's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompile.errors import DataError


@dataclass
class Detections:
    boxes: np.ndarray        # [K, 4] float32, x1 y1 x2 y2 in the original image's pixels
    classes: np.ndarray      # [K] int64
    scores: np.ndarray       # [K] float32
    labels: list[str]        # class names of `classes`

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict]:
        return [{"box": [round(float(v), 2) for v in b], "class": int(c), "label": n, "score": round(float(s), 4)}
                for b, c, n, s in zip(self.boxes, self.classes, self.labels, self.scores)]


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """HWC float32 bilinear resize (pixel centres aligned, like cv2.INTER_LINEAR without antialias)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def preprocess(image: np.ndarray, spec: dict) -> np.ndarray:
    """HWC uint8 RGB of any size -> [1, 3, H, W] float32 as the manifest says."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise DataError(f"detect() takes an HWC uint8 RGB image, got shape {list(arr.shape)} dtype {arr.dtype}",
                        hint="pass e.g. a numpy array of shape (480, 640, 3) and dtype uint8")
    h, w = spec["input_size"]
    x = resize_bilinear(arr, h, w) * np.float32(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _max3(heat: np.ndarray, k: int) -> np.ndarray:
    """k x k max filter (stride 1, same size) over the last two axes."""
    r = k // 2
    pad = np.pad(heat, [(0, 0)] * (heat.ndim - 2) + [(r, r), (r, r)], constant_values=-np.inf)
    h, w = heat.shape[-2:]
    out = np.full_like(heat, -np.inf)
    for dy in range(k):
        for dx in range(k):
            np.maximum(out, pad[..., dy:dy + h, dx:dx + w], out=out)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        ov = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[ov <= iou]
    return np.asarray(keep, np.int64)


def decode(maps: np.ndarray, spec: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """CenterNet maps [N, C + 4, h, w] -> per image (boxes [K, 4] in input pixels, classes [K], scores [K])."""
    if spec.get("decode") == "boxes":          # end-to-end detections from an ONNX detector (--annotations)
        return decode_boxes(maps, spec)
    maps = np.asarray(maps, np.float32)
    c = len(spec["classes"])
    stride, unit = spec["stride"], spec["size_unit"]
    heat = maps[:, :c]
    peaks = (heat == _max3(heat, spec.get("peak_kernel", 3))) & (heat >= spec["score_threshold"])
    H, W = spec["input_size"]
    out = []
    for i in range(len(maps)):
        cls, ys, xs = np.nonzero(peaks[i])
        scores = heat[i, cls, ys, xs]
        order = np.argsort(-scores, kind="stable")[: 4 * spec["max_detections"]]
        cls, ys, xs, scores = cls[order], ys[order], xs[order], scores[order]
        bw, bh = maps[i, c, ys, xs] * unit, maps[i, c + 1, ys, xs] * unit
        cx, cy = (xs + maps[i, c + 2, ys, xs]) * stride, (ys + maps[i, c + 3, ys, xs]) * stride
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, W)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, H)
        keep = []
        for k in np.unique(cls):                       # class-wise NMS
            idx = np.nonzero(cls == k)[0]
            keep.extend(idx[nms(boxes[idx], scores[idx], spec["nms_iou"])])
        keep = np.asarray(sorted(keep, key=lambda j: -scores[j]), np.int64)[: spec["max_detections"]]
        out.append((boxes[keep], cls[keep].astype(np.int64), scores[keep].astype(np.float32)))
    return out


class DetectionFrontend:
    """Bound to a Runner by edgecompile.runtime.load when the manifest's front-end is "detection"."""

    def __init__(self, runner, bundle, spec: dict):
        self.runner = runner
        self.spec = spec

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> Detections:
        spec = self.spec
        x = preprocess(image, spec)
        maps = self.runner.run({spec["input"]: x})[spec["output"]]
        boxes, classes, scores = decode(maps, spec)[0]
        if score_threshold is not None:
            m = scores >= score_threshold
            boxes, classes, scores = boxes[m], classes[m], scores[m]
        h, w = np.asarray(image).shape[:2]
        H, W = spec["input_size"]
        boxes = boxes * np.asarray([w / W, h / H, w / W, h / H], np.float32)
        return Detections(boxes, classes, scores, [spec["classes"][int(k)] for k in classes])


def decode_boxes(out: np.ndarray, spec: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    arr = np.asarray(out, np.float32)
    if arr.ndim != 3 or arr.shape[2] != 6:
        raise DataError(f"the detector's first output has shape {list(arr.shape)}; --annotations needs end-to-end "
                        "detections [N, K, 6] (x1, y1, x2, y2, score, category_id)",
                        hint="export the model with its decoding and NMS in the graph")
    lookup = {c: k for k, c in enumerate(spec["category_ids"])}
    res = []
    for rows in arr:
        keep = [j for j, r in enumerate(rows) if r[4] > spec["score_threshold"] and int(round(r[5])) in lookup]
        r = rows[keep]
        order = np.argsort(-r[:, 4], kind="stable")[: spec["max_detections"]]
        r = r[order]
        res.append((r[:, :4].copy(), np.asarray([lookup[int(round(c))] for c in r[:, 5]], np.int64),
                    r[:, 4].copy()))
    return res
