"""The manifest's schema, checked on every open: a malformed field is a `BundleError` naming the field.

Hand-written (no jsonschema in the runtime). Only the fields the runtime acts on are typed strictly;
descriptive fields a build records (config, passes, toolchain, report numbers ...) only have to be
JSON of a bounded size and depth. Limits are enforced on the raw bytes before `json.loads` runs.
"""
from __future__ import annotations

import json
import re
from itertools import accumulate
from pathlib import Path, PurePosixPath
from typing import Any

from edgecompile.errors import BundleError

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20       # a real manifest is a few KiB; a TVM/LLM one well under 1 MiB
MAX_DEPTH = 64                      # real manifests nest < 10 deep
MAX_ARTIFACTS = 10_000
MAX_TENSORS = 4_096
MAX_RANK = 32
HINT = "rebuild the bundle with `edgecompile build`, or restore its original manifest.json"

DTYPES = frozenset({"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
                    "uint16", "uint32", "uint64", "bool", "str", "object", "complex64", "complex128",
                    "float8_e4m3fn", "float8_e5m2", "int4", "uint4", "string"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def _fail(path: Path, field: str, what: str) -> BundleError:
    return BundleError(f"{path}: manifest field {field!r} {what}", hint=HINT)


def parse_limited(raw: bytes, path: Path, what: str = "manifest", max_bytes: int = MAX_MANIFEST_BYTES,
                  max_depth: int = MAX_DEPTH) -> Any:
    """json.loads with a size and nesting limit checked on the bytes first (no RecursionError, no huge parse)."""
    if len(raw) > max_bytes:
        raise BundleError(f"{path}: {what} is {len(raw)} bytes, over the {max_bytes}-byte limit", hint=HINT)
    depth = max_nesting(raw)
    if depth > max_depth:
        raise BundleError(f"{path}: {what} nests {depth} levels deep, over the limit of {max_depth}", hint=HINT)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{path}: {what} is not valid JSON ({str(exc)[:200]})", hint=HINT) from None


def max_nesting(raw: bytes) -> int:
    """Deepest [ / { nesting of a JSON text, ignoring brackets inside strings."""
    skeleton = _STRINGS.sub(b"", raw)
    steps = (1 if c in b"[{" else -1 for c in skeleton if c in b"[]{}")
    return max(accumulate(steps, initial=0))


def check_manifest(m: Any, path: Path) -> dict:
    """Validate a parsed manifest in place; returns it. Every refusal names the field."""
    if not isinstance(m, dict):
        raise BundleError(f"{path}: manifest is not a JSON object", hint=HINT)
    version = m.get("schema_version")
    if type(version) is not int:
        raise _fail(path, "schema_version", f"must be an integer, got {_show(version)}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema_version {version} is newer than this runtime supports ({SCHEMA_VERSION})",
            hint="upgrade edgecompile on this device, or rebuild the bundle with the installed version")
    if version < 1:
        raise _fail(path, "schema_version", f"must be >= 1, got {version}")
    for key in ("backend", "artifacts", "inputs", "outputs"):
        if key not in m:
            raise _fail(path, key, "is missing")
    _string(m["backend"], path, "backend", pattern=r"[A-Za-z0-9_.-]{1,64}")
    _artifacts(m["artifacts"], path)
    for key in ("inputs", "outputs"):
        _tensors(m[key], path, key)
    for key in ("bundle_id", "precision", "requested_precision", "target", "created_by"):
        if m.get(key) is not None:
            _string(m[key], path, key)
    for key in ("backend_options", "profile", "measured_on", "model", "frontend", "quantization"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise _fail(path, key, f"must be an object, got {_show(m[key])}")
    _optional_fields(m, path)
    return m


def _optional_fields(m: dict, path: Path) -> None:
    opts = m.get("backend_options") or {}
    if opts.get("device") is not None:
        _string(opts["device"], path, "backend_options.device")
    if opts.get("config") is not None:
        cfg = opts["config"]
        if not isinstance(cfg, dict):
            raise _fail(path, "backend_options.config", f"must be an object, got {_show(cfg)}")
        for k, v in cfg.items():
            if not isinstance(v, (str, int, float, bool)):
                raise _fail(path, f"backend_options.config.{k}", f"must be a string or number, got {_show(v)}")
    arch = (m.get("profile") or {}).get("arch")
    if arch is not None:
        _string(arch, path, "profile.arch")
    measured = m.get("measured_on") or {}
    cpu = measured.get("cpu")
    if cpu is not None:
        if not isinstance(cpu, dict):
            raise _fail(path, "measured_on.cpu", f"must be an object, got {_show(cpu)}")
        if cpu.get("arch") is not None:
            _string(cpu["arch"], path, "measured_on.cpu.arch")
        flags = cpu.get("flags")
        if flags is not None and (not isinstance(flags, list) or not all(isinstance(f, str) for f in flags)):
            raise _fail(path, "measured_on.cpu.flags", f"must be a list of strings, got {_show(flags)}")
    frontend = m.get("frontend")
    if frontend is not None:
        _string(frontend.get("kind"), path, "frontend.kind")


def _artifacts(arts: Any, path: Path) -> None:
    if not isinstance(arts, dict):
        raise _fail(path, "artifacts", f"must be an object mapping file names to their info, got {_show(arts)}")
    if not arts:
        raise _fail(path, "artifacts", "is empty (a bundle has at least one artifact)")
    if len(arts) > MAX_ARTIFACTS:
        raise _fail(path, "artifacts", f"lists {len(arts)} files, over the limit of {MAX_ARTIFACTS}")
    for rel, info in arts.items():
        field = f"artifacts[{rel!r}]"
        check_relpath(rel, path, field)
        if not isinstance(info, dict):
            raise _fail(path, field, f"must be an object, got {_show(info)}")
        digest = info.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _fail(path, f"{field}.sha256", f"must be 64 lowercase hex digits, got {_show(digest)}")
        size = info.get("size")
        if size is not None and (type(size) is not int or size < 0):
            raise _fail(path, f"{field}.size", f"must be a non-negative integer, got {_show(size)}")
        role = info.get("role")
        if role is not None:
            _string(role, path, f"{field}.role")


def check_relpath(rel: Any, path: Path, field: str) -> None:
    """A bundle-relative POSIX path: no absolute path, no '..', no empty/odd components, no NUL or backslash."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024:
        raise _fail(path, field, "must be a non-empty relative path")
    parts = PurePosixPath(rel).parts
    if (rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("..", ".") for p in rel.split("/"))
            or not parts or any(ord(c) < 32 for c in rel)):
        raise BundleError(f"{path}: artifact path {rel!r} escapes the bundle or is not a plain relative path",
                          hint=HINT)


def _tensors(specs: Any, path: Path, key: str) -> None:
    if not isinstance(specs, list):
        raise _fail(path, key, f"must be a list of tensor specs, got {_show(specs)}")
    if len(specs) > MAX_TENSORS:
        raise _fail(path, key, f"lists {len(specs)} tensors, over the limit of {MAX_TENSORS}")
    names = set()
    for i, spec in enumerate(specs):
        field = f"{key}[{i}]"
        if not isinstance(spec, dict):
            raise _fail(path, field, f"must be an object with name, shape and dtype, got {_show(spec)}")
        name = spec.get("name")
        _string(name, path, f"{field}.name")
        if name in names:
            raise _fail(path, f"{field}.name", f"repeats {name!r}")
        names.add(name)
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise _fail(path, f"{field}.shape", f"must be a list of at most {MAX_RANK} dimensions, got {_show(shape)}")
        for d in shape:
            ok = (type(d) is int and -1 <= d < 1 << 40) or (isinstance(d, str) and 0 < len(d) <= 256)
            if not ok:
                raise _fail(path, f"{field}.shape", f"has dimension {_show(d)} (an integer >= -1 or a name expected)")
        dtype = spec.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES or not _numpy_knows(dtype):
            raise _fail(path, f"{field}.dtype", f"is {_show(dtype)}, not a dtype name numpy knows")


def _numpy_knows(dtype: str) -> bool:
    import numpy as np

    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True


def _string(value: Any, path: Path, field: str, pattern: str | None = None) -> None:
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise _fail(path, field, f"must be a non-empty string, got {_show(value)}")
    if pattern and not re.fullmatch(pattern, value):
        raise _fail(path, field, f"is {_show(value)}, which is not a valid name")


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__}"
    return f"{type(value).__name__} {text[:60]}" if not isinstance(value, (dict, list)) else text
