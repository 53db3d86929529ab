"""Helpers for the config schema's dataclasses (shared by the compiler's tables and the backends' own)."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def choices(*values: str, default: Any) -> Any:
    """A dataclass field that only takes one of `values` (checked when the config is read)."""
    return field(default=default, metadata={"choices": values})


def bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A numeric dataclass field that must lie in [lo, hi] (either end open when None; checked when read)."""
    return field(default=default, metadata={"range": (lo, hi)})


def range_text(lo, hi) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
