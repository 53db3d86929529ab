"""Datasets as plain numpy arrays: the bound splits of example models, `.npz` files, and specs.

A data spec is either `NAME:SPLIT[START:STOP]` (a split of a model's bound dataset, e.g.
`digits:train[:256]`) or a path to a `.npz` file whose arrays are named after the model inputs,
with an optional `labels` array.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgecompile.errors import DataError
from edgecompile.runtime.specs import TensorSpec

__all__ = ["Dataset", "TensorSpec", "parse_spec", "load_npz"]

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+):(?P<split>[A-Za-z0-9_]+)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


@dataclass
class Dataset:
    """Named input arrays (first axis = sample) and optional labels."""

    identity: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False
    _sha: str | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)     # task details metrics need, e.g. {"detection": decode spec}

    def __post_init__(self):
        lengths = {len(v) for v in self.inputs.values()}
        if self.labels is not None:
            lengths.add(len(self.labels))
        if len(lengths) > 1:
            raise DataError(f"dataset {self.identity}: arrays have different sample counts {sorted(lengths)}",
                            hint="every array (and labels) must have the same first dimension")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def subset(self, start: int | None, stop: int | None, suffix: str = "") -> "Dataset":
        sl = slice(start, stop)
        return Dataset(self.identity + suffix, {k: v[sl] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[sl], self.synthetic, meta=self.meta)

    def take(self, n: int) -> "Dataset":
        return self if n >= len(self) else self.subset(0, n, f"[:{n}]")

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self), batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.inputs.items()}

    def sha256(self) -> str:
        if self._sha is None:
            h = hashlib.sha256()
            for name in sorted(self.inputs):
                arr = np.ascontiguousarray(self.inputs[name])
                h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
                h.update(arr.tobytes())
            if self.labels is not None:
                h.update(b"labels")
                h.update(np.ascontiguousarray(self.labels).tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def describe(self) -> dict:
        return {"identity": self.identity, "n": len(self), "sha256": self.sha256(),
                "labels": self.labels is not None, "synthetic": self.synthetic}


def parse_spec(spec: str) -> tuple[str, str, int | None, int | None] | None:
    """`name:split[a:b]` -> (name, split, a, b); None when spec is not of that form."""
    m = _SPEC.match(spec)
    if not m:
        return None
    to_int = lambda s: int(s) if s not in (None, "") else None  # noqa: E731
    return m["name"], m["split"], to_int(m["start"]), to_int(m["stop"])


def load_npz(path: str | Path, inputs: Sequence[TensorSpec]) -> Dataset:
    """Load a `.npz` with arrays named after `inputs` (+ optional `labels`) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist", hint="pass an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise DataError(f"{path}: not a readable .npz file ({exc.__class__.__name__}: {exc})",
                        hint="save arrays with numpy.savez(path, input=..., labels=...)") from None
    labels = arrays.pop("labels", None)
    feeds = {}
    for spec in inputs:
        if spec.name not in arrays:
            raise DataError(f"{path}: no array named {spec.name!r} (found: {', '.join(sorted(arrays)) or 'none'})",
                            hint=f"name the arrays after the model inputs: {', '.join(s.name for s in inputs)}")
        feeds[spec.name] = arrays.pop(spec.name)
    if arrays:
        raise DataError(f"{path}: unexpected arrays {sorted(arrays)}",
                        hint=f"allowed: {', '.join(s.name for s in inputs)}, labels")
    ds = Dataset(f"file:{path.name}", feeds, labels)
    validate_dataset(ds, inputs, what=str(path))
    return ds


def validate_dataset(ds: Dataset, inputs: Sequence[TensorSpec], what: str) -> None:
    if len(ds) == 0:
        raise DataError(f"{what}: contains zero samples", hint="provide at least one sample")
    for spec in inputs:
        arr = ds.inputs[spec.name]
        if arr.dtype != np.dtype(spec.dtype):
            raise DataError(f"{what}: array {spec.name!r} has dtype {arr.dtype}, the model expects {spec.dtype}",
                            hint=f"convert with arr.astype('{spec.dtype}')")
        if arr.ndim != len(spec.shape) or any(
            isinstance(d, int) and d != a for d, a in zip(spec.shape[1:], arr.shape[1:])
        ):
            raise DataError(
                f"{what}: array {spec.name!r} has shape {list(arr.shape)}, the model expects {list(spec.shape)}",
                hint="the first axis is the sample axis; the others must match the model input",
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{what}: array {spec.name!r} contains NaN or infinite values",
                            hint="clean or drop the non-finite samples")
