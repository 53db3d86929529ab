"""Datasets as plain numpy arrays: the bound splits of example models, `.npz` files, and specs.

A data spec is either `NAME:SPLIT[START:STOP]` (a split of a model's bound dataset, e.g.
`digits:train[:256]`) or a path to a `.npz` file whose arrays are named after the model inputs,
with an optional `labels` array.

Input semantics come from the model (see `input_is_batched`): an input whose first dimension is
symbolic is *batched* (samples stacked on that axis); a scalar, an input with a fixed first dimension
(other than a fixed batch of 1 given stacked samples), or a rank-0/1 integer input (shape, axes,
indices ...) is passed *whole* with every sample. A `.npz` may also hold exactly one feed in the
model's own shapes; then the dataset has one sample and nothing is sliced.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgecompile.errors import DataError
from edgecompile.runtime.specs import TensorSpec, dtype_matches, is_string, np_dtype

__all__ = ["Dataset", "TensorSpec", "parse_spec", "load_npz", "input_is_batched"]

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+):(?P<split>[A-Za-z0-9_]+)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


@dataclass
class Dataset:
    """Named input arrays and optional labels. Batched inputs carry the samples on their first axis;
    the inputs named in `whole` are passed unsliced with every sample (or batch). With no batched
    input, the dataset is one feed (one sample) in the model's own shapes."""

    identity: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False
    whole: frozenset = frozenset()
    batch_limit: int | None = None      # 1 for a model whose batched input has a fixed batch of 1
    _sha: str | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)     # task details metrics need, e.g. {"detection": decode spec}

    def __post_init__(self):
        self.whole = frozenset(self.whole)
        lengths = {len(v) for k, v in self.inputs.items() if k not in self.whole}
        if self.labels is not None:
            lengths.add(len(self.labels))
            if self.inputs and not self.batched:
                lengths.add(1)                     # one feed: one sample
        if len(lengths) > 1:
            raise DataError(f"dataset {self.identity}: arrays have different sample counts {sorted(lengths)}",
                            hint="every batched array (and labels) must have the same first dimension")

    @property
    def batched(self) -> bool:
        """True when some input carries samples on its first axis (outputs are then stacked likewise)."""
        return any(k not in self.whole for k in self.inputs)

    def __len__(self) -> int:
        if not self.inputs:
            return 0
        sizes = [len(v) for k, v in self.inputs.items() if k not in self.whole]
        return sizes[0] if sizes else 1

    def subset(self, start: int | None, stop: int | None, suffix: str = "") -> "Dataset":
        sl = slice(start, stop)
        meta = {k: v for k, v in self.meta.items() if k != "texts"}     # the corpus split no longer describes it
        if not self.batched:
            keep = len(range(1)[sl]) > 0
            return Dataset(self.identity + suffix, self.inputs if keep else {}, self.labels, self.synthetic,
                           self.whole, self.batch_limit, meta=meta)
        return Dataset(self.identity + suffix, {k: v if k in self.whole else v[sl] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[sl], self.synthetic, self.whole,
                       self.batch_limit, meta=meta)

    def take(self, n: int) -> "Dataset":
        return self if n >= len(self) else self.subset(0, n, f"[:{n}]")

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        if not self.batched:
            if self.inputs:
                yield dict(self.inputs)
            return
        batch_size = min(batch_size, self.batch_limit or batch_size)
        for i in range(0, len(self), batch_size):
            yield {k: v if k in self.whole else v[i:i + batch_size] for k, v in self.inputs.items()}

    def first_feed(self) -> dict[str, np.ndarray]:
        """One sample's feed (the whole feed for an unbatched dataset): latency is measured on it."""
        return next(self.batches(1))

    def stack_outputs(self, parts: list) -> np.ndarray:
        """Join one output's per-batch results so that the first axis is the sample axis: batches are
        concatenated; an unbatched dataset's single result gets a leading sample axis of 1."""
        if not self.batched:
            return np.asarray(parts[0])[None]
        return np.concatenate(parts)

    def sha256(self) -> str:
        if self._sha is None:
            h = hashlib.sha256()
            for name in sorted(self.inputs):
                arr = np.ascontiguousarray(self.inputs[name])
                h.update(f"{name}:{arr.dtype}:{arr.shape}:{name in self.whole}".encode())
                h.update(arr.tobytes())
            if self.labels is not None:
                h.update(b"labels")
                h.update(np.ascontiguousarray(self.labels).tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def describe(self) -> dict:
        return {"identity": self.identity, "n": len(self), "sha256": self.sha256(),
                "labels": self.labels is not None, "synthetic": self.synthetic,
                **({"texts": self.meta["texts"]} if "texts" in self.meta else {})}


def parse_spec(spec: str) -> tuple[str, str, int | None, int | None] | None:
    """`name:split[a:b]` -> (name, split, a, b); None when spec is not of that form."""
    m = _SPEC.match(spec)
    if not m:
        return None
    to_int = lambda s: int(s) if s not in (None, "") else None  # noqa: E731
    return m["name"], m["split"], to_int(m["start"]), to_int(m["stop"])


def input_is_batched(spec: TensorSpec, arr: np.ndarray | None = None) -> bool:
    """Whether `spec`'s arrays carry samples on their first axis (see the module docstring)."""
    shape = spec.shape
    if not shape:
        return False                                    # a scalar
    if len(shape) == 1 and np.dtype(np_dtype(spec.dtype)).kind in "iu":
        return False                                    # shape / axes / indices / sizes ...
    first = shape[0]
    if not isinstance(first, int) or first <= 0:
        return True                                     # a symbolic first dimension: the batch axis
    # a fixed batch of 1 given as stacked samples: each sample is fed on its own
    return first == 1 and arr is not None and arr.ndim == len(shape) and arr.shape[0] != 1


def _fits(spec: TensorSpec, arr: np.ndarray, batched: bool) -> bool:
    if arr.ndim != len(spec.shape):
        return False
    dims = list(zip(spec.shape, arr.shape))[1 if batched else 0:]
    return all(not isinstance(d, int) or d <= 0 or d == a for d, a in dims)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    hint = "save arrays with numpy.savez(path, input=..., labels=...)"
    try:
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: holds an object (pickled) array; EdgeCompile never unpickles data files",
                            hint="store numbers as numeric arrays and strings as numpy unicode arrays "
                                 "(numpy.array(list_of_str))") from None
        raise DataError(f"{path}: not a readable numpy file (ValueError: {exc})", hint=hint) from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, zlib.error ...
        raise DataError(f"{path}: not a readable numpy file ({exc.__class__.__name__}: {exc})".replace("\n", " "),
                        hint=hint) from None


def load_npz(path: str | Path, inputs: Sequence[TensorSpec]) -> Dataset:
    """Load a `.npz` with arrays named after `inputs` (+ optional `labels`) and validate it; a `.npy`
    holds the one input of a single-input model. Object (pickled) arrays are refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist", hint="pass an existing .npz file")
    arrays = _read_arrays(path)
    if "" in arrays:
        if len(inputs) != 1:
            raise DataError(f"{path}: a .npy file holds one array, the model has {len(inputs)} inputs",
                            hint=f"save a .npz with arrays named {', '.join(s.name for s in inputs)}")
        arrays = {inputs[0].name: arrays.pop("")}
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
    for spec in inputs:
        check_dtype(spec, feeds[spec.name], str(path))
    whole = {s.name for s in inputs if not input_is_batched(s, feeds[s.name])}
    counts = {len(feeds[s.name]) for s in inputs if s.name not in whole}
    if len(counts) > 1 and all(_fits(s, feeds[s.name], False) for s in inputs):
        whole = {s.name for s in inputs}               # one feed in the model's own shapes
    for spec in inputs:
        arr = feeds[spec.name]
        if not _fits(spec, arr, spec.name not in whole):
            want = [d if isinstance(d, int) and d > 0 else (d if spec.name in whole else "N") for d in spec.shape]
            form = "passed whole with every sample" if spec.name in whole else "samples stacked on the first axis"
            raise DataError(f"{path}: input {spec.name!r} has shape {list(arr.shape)}, the model expects {want}",
                            hint=f"this input is {form}; or give exactly one feed in the model's own shapes")
    if labels is not None and len(whole) == len(inputs):
        labels = labels[None]                           # one feed: labels of its one sample
    fixed_one = any(s.name not in whole and s.shape[0] == 1 for s in inputs)
    ds = Dataset(f"file:{path.name}", feeds, labels, whole=frozenset(whole), batch_limit=1 if fixed_one else None)
    validate_dataset(ds, inputs, what=str(path))
    return ds


def check_dtype(spec: TensorSpec, arr: np.ndarray, what: str) -> None:
    if arr.dtype.kind == "O":
        raise DataError(f"{what}: array {spec.name!r} is an object array",
                        hint="give strings as numpy unicode arrays, numbers as numeric arrays")
    if not dtype_matches(arr.dtype, spec.dtype):
        want = "str (a numpy unicode array)" if is_string(spec.dtype) else spec.dtype
        raise DataError(f"{what}: array {spec.name!r} has dtype {arr.dtype}, the model expects {want}",
                        hint=f"convert with arr.astype('{spec.dtype}')")


def validate_dataset(ds: Dataset, inputs: Sequence[TensorSpec], what: str) -> None:
    if len(ds) == 0:
        raise DataError(f"{what}: contains zero samples", hint="provide at least one sample")
    for spec in inputs:
        arr = ds.inputs[spec.name]
        check_dtype(spec, arr, what)
        if not _fits(spec, arr, spec.name not in ds.whole):
            raise DataError(
                f"{what}: array {spec.name!r} has shape {list(arr.shape)}, the model expects {list(spec.shape)}",
                hint="the first axis is the sample axis; the others must match the model input",
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr.astype(np.float32)).all():
            raise DataError(f"{what}: array {spec.name!r} contains NaN or infinite values",
                            hint="clean or drop the non-finite samples")
