"""Engines built on the device, cached in DIR/cache/tensorrt/: unique temp files, a file lock, recorded hashes.

Several processes (or threads) loading one bundle at once build the engine once: the builder holds an
fcntl lock on `<key>.lock`, re-checks the cache under it, writes `<key>.engine` through a unique temp
file and records its sha256 in `<key>.engine.json`. A cached engine whose bytes do not match the recorded
hash (or without a record) is ignored and rebuilt, never deserialized.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def cache_root(bundle) -> Path:
    root = bundle.cache_dir() / "tensorrt"          # cache_dir refuses a symlinked DIR/cache
    if root.is_symlink():
        from edgecompile.errors import BundleError

        raise BundleError(f"{root} is a symlink; the engine cache must be a plain directory",
                          hint="remove DIR/cache (it is derived and rebuilt)")
    root.mkdir(exist_ok=True)
    return root


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a unique temp file in the same directory, fsync, rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_cached(path: Path) -> bytes | None:
    """The cached engine's bytes when its record exists and its sha256 matches; None otherwise."""
    record = path.with_name(path.name + ".json")
    if not path.is_file() or path.is_symlink() or not record.is_file():
        return None
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))["sha256"]
        data = path.read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def store(path: Path, data: bytes) -> None:
    atomic_write(path, data)
    atomic_write(path.with_name(path.name + ".json"),
                 json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}).encode())


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive fcntl lock on `<path>.lock` (held across processes until the block ends)."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def get_or_build(path: Path, build: Callable[[], bytes], rebuild: bool = False) -> tuple[bytes, str]:
    """(engine bytes, "cached" | "built"): a verified cached engine, or one built once under the lock."""
    if not rebuild and (data := read_cached(path)) is not None:
        return data, "cached"
    with locked(path):
        if not rebuild and (data := read_cached(path)) is not None:      # another process built it meanwhile
            return data, "cached"
        data = build()
        store(path, data)
        return data, "built"
