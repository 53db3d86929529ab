"""The packed convolution forms (packed.py) a target's CPU computes with a tensor intrinsic."""
from __future__ import annotations

from edgecompile.targets.tvm import fma, vnni


def target_forms(target) -> list:
    """The packed forms `target`'s CPU computes with a tensor intrinsic (none for non-x86 targets)."""
    return [m.FORM for m in (vnni, fma) if m.target_has(target)]
