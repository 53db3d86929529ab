"""Helpers for the config schema's dataclasses (shared by the compiler's tables and the backends' own)."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def choices(*values: str, default: Any) -> Any:
    """A dataclass field that only takes one of `values` (checked when the config is read)."""
    return field(default=default, metadata={"choices": values})
