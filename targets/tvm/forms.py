"""The packed convolution forms (packed.py) a target's CPU computes with a tensor intrinsic."""
from __future__ import annotations

from edgecompile.targets.tvm import fma, vnni


def target_forms(target) -> list:
    """The packed forms `target`'s CPU computes with a tensor intrinsic (none for non-x86 targets)."""
    return [form for form in (vnni.FORM, fma.FORM) if form.target_has(target)]
