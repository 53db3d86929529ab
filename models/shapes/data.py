"""The shapes dataset: coloured circles, squares and triangles pasted at random positions and
scales on crops of real photos (Debian's opencv-doc examples), with exact boxes.

Images are IMG x IMG RGB uint8; boxes [x1, y1, x2, y2] in pixels (x2/y2 exclusive: a shape covering
columns 3..10 has x1 = 3, x2 = 11), classes 0..2. Train and test use different photos (the test
backgrounds are held apart) and different seeds. Only numpy and zlib: no image library needed.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PHOTOS_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
TRAIN_PHOTOS = ("rubberwhale1.png", "graf1.png", "smarties.png", "sudoku.png", "chicky_512.png", "basketball1.png",
                "box_in_scene.png")
TEST_PHOTOS = ("rubberwhale2.png", "graf3.png", "basketball2.png")
CLASSES = ("circle", "square", "triangle")
IMG = 96
MAX_BOXES = 4
MIN_SIZE, MAX_SIZE = 18, 45


def read_png(path: str | Path) -> np.ndarray:
    """8-bit, non-interlaced grey / RGB / grey+alpha / RGBA PNG -> HWC uint8 RGB."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    w, h, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: unsupported PNG (bit depth {depth}, colour type {color}, interlace {interlace})")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * channels)
    stride = w * channels
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        f, line = int(raw[y, 0]), raw[y, 1:]
        if f == 0:
            cur = line.copy()
        elif f == 1:       # Sub: a running sum along each channel
            cur = (np.cumsum(line.reshape(w, channels).astype(np.int64), axis=0) & 255).astype(np.uint8).reshape(-1)
        elif f == 2:       # Up
            cur = line + prev
        else:              # Average / Paeth depend on the reconstructed left byte: sequential
            cur = _unfilter_sequential(f, line.tobytes(), prev.tobytes(), channels)
        out[y] = cur
        prev = cur
    img = out.reshape(h, w, channels)
    if channels in (1, 2):
        img = np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _unfilter_sequential(f: int, line: bytes, prev: bytes, bpp: int) -> np.ndarray:
    cur = bytearray(len(line))
    for x in range(len(line)):
        a = cur[x - bpp] if x >= bpp else 0
        b = prev[x]
        if f == 3:
            cur[x] = (line[x] + ((a + b) >> 1)) & 255
        else:
            c = prev[x - bpp] if x >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            cur[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.frombuffer(bytes(cur), np.uint8)


def _photos(names) -> list[np.ndarray]:
    missing = [n for n in names if not (PHOTOS_DIR / n).is_file()]
    if missing:
        from edgecompile.errors import DataError

        raise DataError(f"the shapes dataset needs photos from Debian's opencv-doc package; missing {missing[0]!r} "
                        f"in {PHOTOS_DIR}", hint="apt-get install opencv-doc")
    return [read_png(PHOTOS_DIR / n) for n in names]


def _crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (IMG..min(h, w, 4*IMG) px) resized to IMG x IMG (nearest), maybe mirrored."""
    h, w, _ = photo.shape
    side = int(rng.integers(IMG, min(h, w, 4 * IMG) + 1))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    idx = (np.arange(IMG) * side / IMG).astype(int)
    out = photo[y0 + idx][:, x0 + idx]
    return out[:, ::-1] if rng.random() < 0.5 else out


def _mask(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean size x size mask of the shape, touching all four borders (so the box is exact)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if cls == 0:
        c = size / 2
        return (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    if cls == 1:
        return np.ones((size, size), bool)
    apex = rng.uniform(0.2, 0.8) * size            # triangle: apex on the top edge, base on the bottom
    t = yy / size
    return (xx >= apex * (1 - t)) & (xx <= apex + (size - apex) * t)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def generate(n: int, seed: int, photos: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, IMG, IMG, 3] uint8, labels [n, MAX_BOXES, 5] float32: x1, y1, x2, y2, class; -1 rows pad)."""
    rng = np.random.default_rng(seed)
    backgrounds = _photos(photos)
    images = np.empty((n, IMG, IMG, 3), np.uint8)
    labels = np.full((n, MAX_BOXES, 5), -1.0, np.float32)
    for i in range(n):
        img = _crop(backgrounds[int(rng.integers(len(backgrounds)))], rng).astype(np.float32)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, MAX_BOXES))):         # 1..3 shapes
            for _attempt in range(20):
                size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
                x0, y0 = int(rng.integers(0, IMG - size + 1)), int(rng.integers(0, IMG - size + 1))
                box = [x0, y0, x0 + size, y0 + size]
                if all(_iou(box, b) < 0.05 for b in boxes):
                    break
            else:
                continue
            cls = int(rng.integers(len(CLASSES)))
            m = _mask(cls, size, rng)
            colour = rng.uniform(0, 255, 3)
            colour[int(rng.integers(3))] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])  # saturated
            region = img[y0:y0 + size, x0:x0 + size]
            region[m] = colour
            ys, xs = np.nonzero(m)
            boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1, cls])
        images[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        for j, b in enumerate(boxes):
            labels[i, j] = b
    return images, labels
