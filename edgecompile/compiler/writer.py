"""Writing a bundle atomically.

Everything goes into a staging directory `DIR.tmp-<pid>-<rand>` next to DIR, which is swapped into
place with renameat2(RENAME_EXCHANGE) when complete (or, on filesystems without it, by two renames
with the old bundle restored on failure). At every instant DIR is the complete old or the complete
new bundle; leftovers of a killed build are cleaned on the next one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from edgecompile.errors import BundleError
from edgecompile.runtime.bundle import MANIFEST, SCHEMA_VERSION, sha256_file

__all__ = ["BundleWriter", "check_writable", "recover", "write_json", "json_default", "SCHEMA_VERSION"]


def _check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise BundleError(f"output {str(dest)!r} exists and is not a directory", hint="choose another -o path")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise BundleError(f"output directory {str(dest)!r} is not empty and is not a bundle",
                          hint="refusing to replace it; choose an empty or new -o path")


def check_writable(dest: str | Path) -> None:
    """Fail early (before any work) when a bundle cannot be written at `dest`.

    Probes for real by creating and removing a directory in the nearest existing ancestor, since
    permission bits say nothing for root, while a read-only mount or a special filesystem still refuses."""
    import tempfile

    dest = Path(dest).absolute()
    _check_dest(dest)
    ancestor = dest.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BundleError(f"cannot create output directory {str(dest.parent)!r}: {str(ancestor)!r} is not a directory",
                          hint="choose a writable -o location")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgecompile-probe-", dir=ancestor))
    except OSError as exc:
        raise BundleError(f"output location {str(ancestor)!r} is not writable: {exc.strerror}",
                          hint="choose a writable -o location") from None


class BundleWriter:
    """Stage a bundle next to its destination and swap it in atomically on commit."""

    def __init__(self, dest: str | Path):
        self.dest = Path(dest).absolute()
        parent = self.dest.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot create output directory {str(parent)!r}: {exc.strerror}",
                              hint="choose a writable -o location") from None
        _check_dest(self.dest)
        recover(self.dest)
        self.staging = parent / f"{self.dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.staging.mkdir()
        except OSError as exc:
            raise BundleError(f"cannot write to {str(parent)!r}: {exc.strerror}",
                              hint="choose a writable -o location") from None
        self.artifacts: dict[str, dict] = {}
        self.committed = False

    def path(self, rel: str) -> Path:
        p = self.staging / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add_artifact(self, rel: str, role: str, **meta: Any) -> Path:
        """Register a file already written to `self.path(rel)` as a hashed artifact."""
        p = self.staging / rel
        if not p.is_file():
            raise BundleError(f"internal: artifact {rel!r} was registered but not written")
        self.artifacts[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size, "role": role, **meta}
        return p

    def write_manifest(self, manifest: dict) -> dict:
        manifest = {"schema_version": SCHEMA_VERSION, **manifest, "artifacts": dict(sorted(self.artifacts.items()))}
        write_json(self.staging / MANIFEST, manifest)
        return manifest

    def write_derived(self, rel: str, text: str) -> None:
        _write_text(self.staging / rel, text)

    def commit(self) -> Path:
        """Swap the staging directory into place. The old bundle (if any) is removed afterwards."""
        _fsync_tree(self.staging)
        if self.dest.exists():
            if _exchange(self.staging, self.dest):
                shutil.rmtree(self.staging, ignore_errors=True)        # staging now holds the old bundle
            else:
                old = self.dest.parent / f"{self.dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(self.dest, old)
                try:
                    os.rename(self.staging, self.dest)
                except OSError:
                    os.rename(old, self.dest)
                    raise
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.staging, self.dest)
        self.committed = True
        return self.dest

    def abort(self) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()


def write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover(dest: Path) -> list[str]:
    """Clean up after killed builds: remove dead staging dirs, restore an orphaned old bundle."""
    actions = []
    parent = dest.parent
    if not parent.is_dir():
        return actions
    for p in parent.glob(f"{dest.name}.tmp-*"):
        pid = _pid_of(p.name)
        if pid is not None and _alive(pid) and pid != os.getpid():
            continue
        shutil.rmtree(p, ignore_errors=True)
        actions.append(f"removed leftover staging directory {p.name}")
    for p in sorted(parent.glob(f"{dest.name}.old-*")):
        if not dest.exists() and (p / MANIFEST).is_file():
            os.rename(p, dest)
            actions.append(f"restored previous bundle from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
    return actions


def _pid_of(name: str) -> int | None:
    try:
        return int(name.rsplit(".tmp-", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
