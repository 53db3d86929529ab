"""Natural photo crops for ImageNet classifiers, from Debian's `opencv-doc` example images.

No downloads: the photos are the colour pictures that `opencv-doc` installs under
/usr/share/doc/opencv-doc/examples/data/. Preprocessing is the standard ImageNet one (resize the
short side to S, crop 224x224, scale to [0, 1], subtract the ImageNet mean, divide by its std),
with S = 256 and the centre crop for the first view of each photo; further views (larger S,
corner crops, horizontal flips) give more samples per photo.

Calibration and evaluation come from DIFFERENT photos (near-duplicate pairs such as the two
views of a stereo pair stay on the same side), so agreement is measured on pictures the
calibrator never saw. Samples are ordered view-major, so the first N samples of a split cover
all of its photos.

The uint8 crops are cached as .npz in $EDGECOMPILE_CACHE/data (keyed by the photo bytes and the
view list); loading normalises them to float32.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgecompile.errors import DataError

PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
CLASSES_FILE = PHOTO_DIR / "dnn" / "classification_classes_ILSVRC2012.txt"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SIZE = 224

# Groups of photos that must stay on one side of the split (stereo pairs, two frames of a scene).
CALIBRATION_PHOTOS = (
    ("apple.jpg",), ("baboon.jpg",), ("HappyFish.jpg",), ("aero1.jpg", "aero3.jpg"), ("aloeL.jpg", "aloeR.jpg"),
    ("butterfly.jpg",), ("fruits.jpg",), ("smarties.png",), ("graf1.png", "graf3.png"), ("pic1.png",),
)
EVALUATION_PHOTOS = (
    ("building.jpg",), ("home.jpg",), ("messi5.jpg",), ("orange.jpg",), ("squirrel_cls.jpg",),
    ("starry_night.jpg",), ("stuff.jpg",), ("leuvenA.jpg", "leuvenB.jpg"), ("rubberwhale1.png", "rubberwhale2.png"),
    ("pca_test1.jpg",), ("board.jpg",), ("licenseplate_motion.jpg",), ("ela_original.jpg", "ela_modified.jpg"),
    ("left.jpg", "right.jpg"), ("chicky_512.png",), ("pic3.png",),
)
# (short side S, crop position, horizontal flip); the first is the standard evaluation view.
VIEWS = tuple((s, pos, flip) for s in (256, 320, 288, 384) for pos, flip in
              (("centre", False), ("centre", True), ("top-left", False), ("bottom-right", True),
               ("top-right", False), ("bottom-left", True)))


def photo_files(split: str) -> list[Path]:
    groups = {"calibration": CALIBRATION_PHOTOS, "evaluation": EVALUATION_PHOTOS}[split]
    return [PHOTO_DIR / name for group in groups for name in group]


def _require_photos(files: list[Path]) -> None:
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"natural photos missing from {PHOTO_DIR}: {', '.join(missing[:4])}"
                        + (" ..." if len(missing) > 4 else ""),
                        hint="install Debian's opencv-doc package: sudo apt-get install opencv-doc")


def crop(img, short_side: int, position: str, flip: bool) -> np.ndarray:
    """One 224x224 uint8 RGB view [224, 224, 3] of a PIL image."""
    from PIL import Image

    w, h = img.size
    scale = short_side / min(w, h)
    nw, nh = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    if position == "centre":
        left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    else:
        vert, horiz = position.split("-")
        left = 0 if horiz == "left" else nw - SIZE
        top = 0 if vert == "top" else nh - SIZE
    arr = np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), np.uint8)
    return arr[:, ::-1] if flip else arr


def _crops(files: list[Path], views) -> np.ndarray:
    from PIL import Image

    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    return np.stack([crop(im, s, pos, flip) for (s, pos, flip) in views for im in images])   # view-major


@lru_cache(maxsize=None)
def uint8_crops(split: str, views: int = len(VIEWS)) -> np.ndarray:
    """[N, 224, 224, 3] uint8 crops of one split (cached on disk)."""
    from edgecompile.cache import content_key, subdir

    files = photo_files(split)
    _require_photos(files)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    key = content_key("photo-crops/v1", h.hexdigest(), VIEWS[:views], SIZE)[:24]
    path = subdir("data") / f"photos-{split}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["crops"]
        except Exception:
            pass                                         # unreadable: recompute and rewrite
    arr = _crops(files, VIEWS[:views])
    tmp = path.with_name(f"{path.stem}.tmp-{id(arr)}.npz")
    np.savez(tmp, crops=arr)
    tmp.replace(path)
    return arr


def normalise(crops: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], ImageNet mean/std."""
    x = crops.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def images(split: str, n: int | None = None) -> np.ndarray:
    """Normalised float32 [N, 3, 224, 224] crops; the first `n` (view-major: every photo first)."""
    c = uint8_crops(split)
    return normalise(c if n is None else c[:n])


def class_labels() -> list[str] | None:
    if not CLASSES_FILE.is_file():
        return None
    return [line.strip() for line in CLASSES_FILE.read_text().splitlines() if line.strip()]


def write_npz(path: Path, split: str, n: int | None = None, input_name: str = "input") -> Path:
    """A `--data` file for an ONNX classifier: {input_name: float32 [N, 3, 224, 224]}."""
    np.savez(path, **{input_name: images(split, n)})
    return Path(path)
