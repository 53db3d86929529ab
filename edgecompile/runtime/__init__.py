"""The torch-free runtime an app embeds: `load(bundle_dir) -> Runner`.

Imports only numpy, the bundle reader and the one engine a bundle needs (onnxruntime, openvino,
tvm runtime, tensorrt) through that backend's run side (`edgecompile.targets.<backend>.run`) —
never torch, onnx, click or the compiler, and never pickle. `load` verifies the manifest's schema and
every artifact's sha256 before anything is executed.

Runners are context managers with `.inputs` / `.outputs` (TensorSpec lists), `.run(feeds)`
returning {output name: array}, and `runner(array)` for single-input models. `run` is safe to
call from several threads. Inputs are validated (names, dtypes, ranks, static dimensions); a
float input containing NaN/inf is *warned about* (once per runner, RuntimeWarning) and run.
"""
from __future__ import annotations

import importlib
import warnings
from functools import lru_cache
from pathlib import Path

from edgecompile.errors import BundleError
from edgecompile.runtime.bundle import Bundle
from edgecompile.runtime.runner import Availability, Runner
from edgecompile.runtime.specs import TensorSpec

__all__ = ["load", "Runner", "Bundle", "TensorSpec", "Availability", "ENGINES", "engine"]

# backend name -> its run-side module: `availability() -> Availability` and
# `load(bundle, *, threads, validate) -> Runner`. Third-party backends add theirs through the
# `edgecompile.engines` entry-point group.
ENGINES = {
    "ort": "edgecompile.targets.ort.run",
    "openvino": "edgecompile.targets.openvino.run",
    "tvm": "edgecompile.targets.tvm.run",
    "tensorrt": "edgecompile.targets.tensorrt.run",
}


@lru_cache(maxsize=None)
def _engine_refs() -> dict[str, str]:
    from importlib.metadata import entry_points     # ~45 ms: only for a backend not built in

    found = dict(ENGINES)
    for ep in entry_points(group="edgecompile.engines"):
        found.setdefault(ep.name, ep.value)
    return found


def engine(backend: str):
    """The run-side module of `backend`, or None when this installation has no such backend."""
    ref = ENGINES.get(backend) or _engine_refs().get(backend)
    return importlib.import_module(ref) if ref else None


def _warn_other_cpu(bundle: Bundle) -> None:
    """The backend/precision choice and the report's latencies hold for the CPU they were measured on."""
    from edgecompile.runtime.machine import speed_flags_differ

    diff = speed_flags_differ(bundle.manifest.get("measured_on"))
    if diff is None:
        return
    missing, extra = diff
    what = "; ".join(filter(None, [f"missing here: {' '.join(sorted(missing))}" if missing else "",
                                   f"new here: {' '.join(sorted(extra))}" if extra else ""]))
    chosen = " (its backend/precision were chosen by measurement there)" if bundle.manifest.get("autochoice") else ""
    warnings.warn(f"bundle {bundle.path} was measured on a CPU with other features{chosen}: {what}; "
                  "rebuild on this machine for its fastest choice", RuntimeWarning, stacklevel=3)


def load(path: str | Path, *, threads: int | None = None, verify: bool = True, validate: bool = True,
         progress=None, trusted_keys=None) -> Runner:
    """Open a bundle directory, verify it, and return a Runner for its backend.

    Verification hashes every artifact, except one that a record in the user's cache shows unchanged
    (device, inode, size, mtime, ctime) since it last matched its sha256 (edgecompile/runtime/verified.py;
    EDGECOMPILE_REVERIFY=1 re-hashes everything).

    `trusted_keys` (paths of Ed25519 public keys from `edgecompile keygen`, or key objects; default: the
    EDGECOMPILE_TRUSTED_KEYS environment variable, paths separated by os.pathsep): when any are given, an
    unsigned bundle or one signed by another key is refused before its artifacts are opened by an engine."""
    from edgecompile.runtime.signing import trusted_from_env
    from edgecompile.runtime.verified import reverify_forced

    bundle = Bundle.open(path, verify=verify, reuse_hashes=not reverify_forced())
    keys = list(trusted_keys) if trusted_keys is not None else trusted_from_env()
    if keys:
        bundle.check_signature(keys)
    backend = bundle.backend
    run_side = engine(backend)
    if run_side is None:
        raise BundleError(f"{path}: bundle needs backend {backend!r}, which this installation does not have",
                          hint=f"install edgecompile[{backend}] on this device")
    avail = run_side.availability()
    if not avail.ok:
        raise BundleError(f"{path}: backend {backend!r} cannot run here: {avail.reason}",
                          hint=avail.hint or f"install edgecompile[{backend}]")
    _warn_other_cpu(bundle)
    runner = run_side.load(bundle, threads=threads, validate=validate, progress=progress)
    spec = bundle.manifest.get("frontend")
    if spec:
        runner.frontend = _make_frontend(spec, runner, bundle)
    return runner


# manifest["frontend"]["kind"] -> "module:Class"; Class(runner, bundle, spec) provides the front-end methods.
FRONTENDS = {
    "text": "edgecompile.runtime.text:TextFrontend",
    "generation": "edgecompile.runtime.generate:GenerationFrontend",
    "detection": "edgecompile.runtime.detect:DetectionFrontend",
}


def _make_frontend(spec, runner: Runner, bundle: Bundle):

    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in FRONTENDS:
        runner.close()
        raise BundleError(f"{bundle.path}: manifest field 'frontend.kind' is {kind!r}, not one of "
                          f"{sorted(FRONTENDS)}", hint="rebuild the bundle with this version of edgecompile")
    module, _, cls = FRONTENDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(runner, bundle, spec)
