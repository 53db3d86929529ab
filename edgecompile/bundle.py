"""The bundle: a directory with `manifest.json`, hashed artifacts and derived reports.

Writing is atomic: everything goes into a staging directory `DIR.tmp-<pid>-<rand>` next to DIR,
which is swapped into place with renameat2(RENAME_EXCHANGE) when complete (or, on filesystems
without it, by two renames with the old bundle restored on failure). At every instant DIR is the
complete old or the complete new bundle; leftovers of a killed build are cleaned on the next one.

Reading never imports torch and never unpickles: JSON + sha256 only.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompile.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DERIVED = ("report.json", "report.md", "report.html", "cache")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise BundleError(f"{path}: no bundle directory there", hint="build one with `edgecompile build MODEL -o DIR`")
        if not mpath.is_file():
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})", hint="build one with `edgecompile build MODEL -o DIR`")
        manifest = read_json(mpath, "manifest", hint="rebuild the bundle")
        if not isinstance(manifest, dict):
            raise BundleError(f"{mpath}: manifest is not a JSON object", hint="rebuild the bundle")
        version = manifest.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{mpath}: manifest has no integer schema_version", hint="rebuild the bundle")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{path}: bundle schema_version {version} is newer than this runtime supports ({SCHEMA_VERSION})",
                hint="upgrade edgecompile on this device, or rebuild the bundle with the installed version")
        if version < 1:
            raise BundleError(f"{path}: invalid schema_version {version}", hint="rebuild the bundle")
        for key in ("backend", "artifacts", "inputs", "outputs"):
            if key not in manifest:
                raise BundleError(f"{mpath}: manifest lacks {key!r}", hint="rebuild the bundle")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> list[str]:
        """Check every listed artifact exists and matches its sha256; returns the checked names."""
        checked = []
        for rel, info in sorted(self.manifest["artifacts"].items()):
            p = self._safe(rel)
            if not p.is_file():
                raise BundleError(f"{self.path}: artifact {rel!r} is missing", hint="rebuild the bundle or restore the file")
            digest = sha256_file(p)
            if digest != info["sha256"]:
                raise BundleError(f"{self.path}: artifact {rel!r} fails its sha256 check (tampered or corrupted)",
                                  hint="rebuild the bundle or restore the original file")
            checked.append(rel)
        return checked

    def _safe(self, rel: str) -> Path:
        p = (self.path / rel)
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{self.path}: artifact path {rel!r} escapes the bundle", hint="rebuild the bundle")
        return p

    def artifact(self, role: str) -> Path:
        """Path of the (first) artifact with `role`, e.g. "model"."""
        for rel, info in sorted(self.manifest["artifacts"].items()):
            if info.get("role") == role:
                return self._safe(rel)
        raise BundleError(f"{self.path}: bundle has no {role!r} artifact", hint="rebuild the bundle")

    def artifacts_with_role(self, role: str) -> list[Path]:
        return [self._safe(r) for r, i in sorted(self.manifest["artifacts"].items()) if i.get("role") == role]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def bundle_id(self) -> str:
        return self.manifest.get("bundle_id", "")

    def io_specs(self) -> tuple[list, list]:
        """(inputs, outputs) as TensorSpecs, from the manifest."""
        from edgecompile.data import TensorSpec

        return ([TensorSpec.from_dict(d) for d in self.manifest["inputs"]],
                [TensorSpec.from_dict(d) for d in self.manifest["outputs"]])

    def report(self) -> dict | None:
        p = self.path / "report.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def cache_dir(self) -> Path:
        p = self.path / "cache"
        p.mkdir(exist_ok=True)
        return p


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


def read_json(path: Path, what: str, error: type = BundleError, hint: str | None = None) -> Any:
    """Parse a JSON file; unreadable or malformed -> one-line `error` naming the file and `what` it is."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc})", hint=hint) from None


def write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
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
