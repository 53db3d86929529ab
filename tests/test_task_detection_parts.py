"""Issue 25, detection building blocks (no trained model needed): the PNG reader, the generated
shapes data, CenterNet decoding + NMS, and the fast COCO matcher against pycocotools."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from edgecompile.runtime.detect import decode, nms, preprocess, resize_bilinear
from edgecompile.verify.detection import MatchTable, coco_map, ground_truth


def _encode_png(img: np.ndarray, filters: list[int]) -> bytes:
    """A PNG with the given filter type per row (0..4), encoded the straightforward way."""
    h, w, c = img.shape
    bpp = c
    rows = []
    prev = np.zeros(w * c, np.int32)
    for y in range(h):
        cur = img[y].reshape(-1).astype(np.int32)
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        f = filters[y % len(filters)]
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) >> 1
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        rows.append(bytes([f]) + ((cur - pred) & 255).astype(np.uint8).tobytes())
        prev = cur
    color = {1: 0, 3: 2, 4: 6}[c]

    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_reader_all_filters(tmp_path, channels):
    from edgecompile.models.shapes.data import read_png

    img = np.random.default_rng(channels).integers(0, 256, (11, 7, channels), dtype=np.uint8)
    p = tmp_path / "x.png"
    p.write_bytes(_encode_png(img, [0, 1, 2, 3, 4]))
    got = read_png(p)
    want = np.repeat(img[:, :, :1], 3, 2) if channels == 1 else img[:, :, :3]
    assert got.shape == (11, 7, 3) and np.array_equal(got, want)


def test_png_roundtrip_of_the_report_encoder(tmp_path):
    from edgecompile.models.shapes.data import read_png

    from edgecompile.verify.detection import png_bytes

    img = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    (tmp_path / "y.png").write_bytes(png_bytes(img))
    assert np.array_equal(read_png(tmp_path / "y.png"), img)


def test_generated_shapes_have_exact_boxes():
    from edgecompile.models.shapes.data import (
        CLASSES, IMG, MAX_SIZE, MIN_SIZE, TEST_PHOTOS, TRAIN_PHOTOS, _mask, generate
    )

    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)              # test backgrounds are held apart
    images, labels = generate(40, seed=5, photos=TEST_PHOTOS)
    assert images.shape == (40, IMG, IMG, 3) and images.dtype == np.uint8
    counts = (labels[..., 4] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    real = labels[labels[..., 4] >= 0]
    w, h = real[:, 2] - real[:, 0], real[:, 3] - real[:, 1]
    assert (
        real[:, :4].min() >= 0 and real[:, :4].max() <= IMG and set(real[:, 4].astype(int)) <= set(range(len(CLASSES)))
    )
    assert w.min() >= MIN_SIZE - 1 and max(w.max(), h.max()) <= MAX_SIZE
    rng = np.random.default_rng(0)
    for cls in range(3):            # each mask touches all four sides of its square: the box is the mask's extent
        m = _mask(cls, 20, rng)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    assert np.array_equal(generate(3, 7, TEST_PHOTOS)[1], generate(3, 7, TEST_PHOTOS)[1])   # fixed seeds


SPEC = {"classes": ["a", "b"], "stride": 4, "size_unit": 16.0, "input_size": [64, 64], "score_threshold": 0.05,
        "nms_iou": 0.5, "max_detections": 100, "peak_kernel": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "scale": 1 / 255}


def test_decode_peaks_to_boxes_and_suppresses_neighbours():
    maps = np.zeros((1, 6, 16, 16), np.float32)
    maps[0, 1, 5, 3] = 0.9                          # class b centre at cell (x=3, y=5)
    maps[0, 1, 5, 4] = 0.6                          # its neighbour: not a peak
    maps[0, 0, 12, 12] = 0.02                       # below the score threshold
    maps[0, 2, 5, 3], maps[0, 3, 5, 3] = 1.0, 0.5   # w 16 px, h 8 px
    maps[0, 4, 5, 3], maps[0, 5, 5, 3] = 0.5, 0.25  # centre (3.5, 5.25) cells = (14, 21) px
    boxes, classes, scores = decode(maps, SPEC)[0]
    assert classes.tolist() == [1] and scores[0] == pytest.approx(0.9)
    assert boxes[0].tolist() == pytest.approx([6.0, 17.0, 22.0, 25.0])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.5)
    assert keep.tolist() == [1, 2]


def test_preprocess_resizes_and_normalises_like_the_manifest_says():
    img = np.full((30, 50, 3), 255, np.uint8)
    x = preprocess(img, SPEC)
    assert x.shape == (1, 3, 64, 64) and np.allclose(x, (1.0 - 0.5) / 0.25)
    ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None], (2, 1, 1))
    assert np.allclose(resize_bilinear(ramp, 2, 8), ramp)
    with pytest.raises(Exception, match="HWC uint8 RGB"):
        preprocess(np.zeros((4, 4), np.uint8), SPEC)


def _random_case(seed: int, n_images: int = 60):
    rng = np.random.default_rng(seed)
    labels = np.full((n_images, 4, 5), -1.0, np.float32)
    dets = []
    for i in range(n_images):
        k = int(rng.integers(0, 4))
        for j in range(k):
            x, y, s = rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(8, 24)
            labels[i, j] = [x, y, x + s, y + s, rng.integers(0, 2)]
        boxes, cls, scores = [], [], []
        for x1, y1, x2, y2, c in labels[i, :k]:
            jit = rng.normal(0, 2.0, 4)
            boxes.append([x1 + jit[0], y1 + jit[1], x2 + jit[2], y2 + jit[3]])
            cls.append(c if rng.random() > 0.1 else 1 - c)
            scores.append(rng.uniform(0.3, 1.0))
        for _ in range(int(rng.integers(0, 3))):     # false positives
            x, y, s = rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(8, 24)
            boxes.append([x, y, x + s, y + s])
            cls.append(rng.integers(0, 2))
            scores.append(rng.uniform(0.0, 0.8))
        dets.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(cls, np.int64),
                     np.asarray(scores, np.float32)))
    return dets, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_matcher_equals_pycocotools(seed):
    dets, labels = _random_case(seed)
    gts = ground_truth(labels)
    ref = coco_map(dets, gts, ["a", "b"])
    fast = MatchTable.build(dets, gts, 2).map()
    assert 0.2 < ref["map"] < 0.95
    assert fast[0] == pytest.approx(ref["map"], abs=1e-6) and fast[1] == pytest.approx(ref["map50"], abs=1e-6)
    # a resample that drops every other image equals evaluating the kept images with pycocotools
    w = np.tile([1, 0], len(gts) // 2)
    keep = [i for i in range(len(gts)) if w[i]]
    sub = coco_map([dets[i] for i in keep], [gts[i] for i in keep], ["a", "b"])
    assert MatchTable.build(dets, gts, 2).map(w)[0] == pytest.approx(sub["map"], abs=1e-6)


def test_coco_map_perfect_and_empty():
    labels = np.array([[[2, 2, 12, 12, 0], [20, 20, 40, 30, 1]]], np.float32)
    gts = ground_truth(labels)
    perfect = [(labels[0, :, :4], labels[0, :, 4].astype(np.int64), np.array([0.9, 0.8], np.float32))]
    res = coco_map(perfect, gts, ["a", "b"])
    assert res["map"] == pytest.approx(1.0) and [r["ap"] for r in res["per_class"]] == pytest.approx([1.0, 1.0])
    empty = [(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    assert coco_map(empty, gts, ["a", "b"])["map"] == 0.0
