"""Calibration results of the quantize pass, kept per graph + data + settings within a process."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from edgecompile.passes.float_stems import float_stems
from edgecompile.targets.base import QuantPreset

# Calibration results (float graph after equalization/bias correction, ranges, notes) by graph +
# data + settings: the backend candidates of an `auto` build quantize the same graph with the same
# preset, and calibrating is most of the cost. Small and process-local.
CALIBRATIONS: dict[str, tuple] = {}
CALIBRATIONS_MAX = 4
# Learned rounding (adaround() of `adaround = "auto"`) on a cached calibration, by the same key: it is
# the same for every backend candidate and costs minutes on MobileNetV2.
ROUNDINGS: dict[str, tuple] = {}


def calibration_key(proto, batches, section, preset: QuantPreset, exclude) -> str:
    import hashlib

    h = hashlib.sha256(proto.SerializeToString(deterministic=True))
    for b in batches:
        for name in sorted(b):
            arr = np.ascontiguousarray(b[name])
            h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
    s = section
    kind = {k: v for k, v in asdict(preset).items() if not k.startswith("float_stem")}    # the stems it gives count
    h.update(repr((s.ops, s.calibrate, s.percentile, s.equalize, s.bias_correction, s.adaround is True, kind,
                   sorted(exclude), float_stems(proto, preset))).encode())
    return h.hexdigest()


def remember(key: str, value: tuple, store: dict | None = None) -> None:
    store = CALIBRATIONS if store is None else store
    store[key] = value
    while len(store) > CALIBRATIONS_MAX:
        store.pop(next(iter(store)))
