"""runner.detect's vectorised pre/post-processing gives exactly what the previous implementation gave
(kept below as the reference: per-pixel float resize, full max-filter peak test, per-class NMS loops) on
the shapes test images, on the same maps rounded to 8-bit steps (ties, as an INT8 graph produces) and on
dense random maps (hundreds of overlapping candidates)."""
from __future__ import annotations

import numpy as np
import pytest

from edgecompile.runtime.detect import decode, preprocess, window_max


# -- the previous implementation (edgecompile/runtime/detect.py before the vectorised rewrite) ------------
def ref_resize(image, height, width):
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


def ref_preprocess(image, spec):
    h, w = spec["input_size"]
    x = ref_resize(image, h, w) * np.float32(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def ref_max(heat, k):
    r = k // 2
    pad = np.pad(heat, [(0, 0)] * (heat.ndim - 2) + [(r, r), (r, r)], constant_values=-np.inf)
    h, w = heat.shape[-2:]
    out = np.full_like(heat, -np.inf)
    for dy in range(k):
        for dx in range(k):
            np.maximum(out, pad[..., dy:dy + h, dx:dx + w], out=out)
    return out


def ref_nms(boxes, scores, iou):
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


def ref_decode(maps, spec):
    maps = np.asarray(maps, np.float32)
    c = len(spec["classes"])
    stride, unit = spec["stride"], spec["size_unit"]
    heat = maps[:, :c]
    peaks = (heat == ref_max(heat, spec.get("peak_kernel", 3))) & (heat >= spec["score_threshold"])
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
        for k in np.unique(cls):
            idx = np.nonzero(cls == k)[0]
            keep.extend(idx[ref_nms(boxes[idx], scores[idx], spec["nms_iou"])])
        keep = np.asarray(sorted(keep, key=lambda j: -scores[j]), np.int64)[: spec["max_detections"]]
        out.append((boxes[keep], cls[keep].astype(np.int64), scores[keep].astype(np.float32)))
    return out
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    import torch

    from edgecompile.models.shapes import create, frontend_spec, raw_images

    images = raw_images("test")
    spec = frontend_spec()
    x = np.concatenate([ref_preprocess(img, spec) for img in images])
    with torch.no_grad():
        maps = create()(torch.from_numpy(x)).numpy()
    return images, spec, maps


def _same(new, ref):
    assert len(new) == len(ref)
    for (b, c, s), (rb, rc, rs) in zip(new, ref):
        assert b.dtype == rb.dtype and c.dtype == rc.dtype and s.dtype == rs.dtype
        assert np.array_equal(b, rb) and np.array_equal(c, rc) and np.array_equal(s, rs)


def test_decode_matches_the_previous_implementation_on_the_test_images(shapes):
    _, spec, maps = shapes
    ref = ref_decode(maps, spec)
    assert sum(len(r[2]) for r in ref) > 400            # detections to compare, not empty lists
    _same(decode(maps, spec), ref)
    eight_bit = np.round(maps * 255) / 255              # an INT8 graph's maps: many tied scores
    ref8 = ref_decode(eight_bit, spec)
    assert any(len(np.unique(r[2])) < len(r[2]) for r in ref8)
    _same(decode(eight_bit, spec), ref8)
    _same([decode(maps[i:i + 1], spec)[0] for i in range(0, 400, 37)], ref[::37])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_matches_on_dense_overlapping_candidates(shapes, seed):
    _, spec, _ = shapes
    rng = np.random.default_rng(seed)
    maps = rng.random((4, 7, 16, 16)).astype(np.float32)
    maps[:, :3] = np.round(maps[:, :3] * 20) / 20       # coarse scores: plateaus and ties
    maps[:, 3:5] *= 3                                  # boxes up to 48 px, centres within 64 px: heavy overlap
    ref = ref_decode(maps, spec)
    suppressed = sum(len(np.nonzero((m[:3] >= 0.05) & (m[:3] == ref_max(m[:3], 3)))[0]) for m in maps)
    assert suppressed > sum(len(r[2]) for r in ref)     # NMS removed some: the loop was exercised
    _same(decode(maps, spec), ref)
    for k in (1, 3, 5):
        assert np.array_equal(window_max(maps[:, :3], k), ref_max(maps[:, :3], k))


def test_preprocess_matches_the_previous_implementation(shapes):
    images, spec, _ = shapes
    lut = {}
    for img in images[:50]:                             # input-size images: the table path
        assert np.array_equal(preprocess(img, spec, lut), ref_preprocess(img, spec))
    assert "table" in lut
    rng = np.random.default_rng(5)
    for h, w in ((30, 50), (64, 200), (480, 640), (7, 3), (1, 1), (65, 64)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(preprocess(img, spec, lut), ref_preprocess(img, spec))
