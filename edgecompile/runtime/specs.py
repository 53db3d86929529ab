"""Tensor specs: a model input's or output's name, shape (ints, or strings for symbolic dimensions) and dtype."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompile.errors import DataError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple          # ints, or a string for a symbolic (dynamic) dimension
    dtype: str            # numpy dtype name, e.g. "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


_STRING = ("str", "object", "string")


def is_string(dtype: str) -> bool:
    return dtype in _STRING


def np_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a spec's dtype name: bfloat16 / float8 via ml_dtypes, strings as unicode."""
    if dtype in _STRING:
        return np.dtype(str)
    try:
        return np.dtype(dtype)
    except TypeError:
        try:
            import ml_dtypes
        except ImportError:
            raise DataError(f"dtype {dtype} needs the ml_dtypes package", hint="pip install ml_dtypes") from None
        if not hasattr(ml_dtypes, dtype):
            raise DataError(f"unsupported tensor dtype {dtype!r}", hint="use a dtype ONNX Runtime accepts") from None
        return np.dtype(getattr(ml_dtypes, dtype))


def dtype_matches(given: np.dtype, dtype: str) -> bool:
    """Whether an array's dtype fits a spec's: strings accept any numpy unicode array."""
    if dtype in _STRING:
        return given.kind == "U"
    return given == np_dtype(dtype)
