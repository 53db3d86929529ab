"""The content-addressed build cache: one directory per (stage, key) under `cache_dir()/stages/`.

A key is a sha256 over everything that changes the stage's output (see `plan.export_key` and
`plan.bundle_key`): source fingerprint, effective config, backend/profile/precision, data
sha256s, toolchain versions and a fingerprint of EdgeCompile's own code. An entry is written into
a temporary directory and renamed into place, so readers see a complete entry or none. Every entry
records the sha256 of its files in `entry.json`; an entry that fails that check (corrupted,
half-deleted, tampered) is a miss and is removed, never an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Callable

from edgecompile.cache import MARKER, cache_dir, is_marked, mark
from edgecompile.errors import ConfigError

ENTRY = "entry.json"
STAGES_DIR = "stages"


@lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """sha256 over EdgeCompile's own Python sources (frame, passes, targets).

    The package version does not change while code is edited; keying cached stages by the code
    itself means an edited pass or backend can never be served a stale artifact."""
    import edgecompile
    import edgecompile.passes
    import edgecompile.targets

    h = hashlib.sha256()
    for pkg in (edgecompile, edgecompile.passes, edgecompile.targets):
        root = Path(pkg.__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            h.update(f"{pkg.__name__}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    from edgecompile.runtime.bundle import sha256_file

    return sha256_file(path)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ENTRY)


class StageCache:
    """get/put of stage outputs (directories of files) by content key."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else cache_dir()
        self.enabled = enabled

    def _dir(self, stage: str, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a hex digest, got {key!r}")
        return self.root / STAGES_DIR / stage / key

    def get(self, stage: str, key: str) -> Path | None:
        """The entry's directory if present and intact; None otherwise (a broken entry is removed)."""
        if not self.enabled:
            return None
        path = self._dir(stage, key)
        if not path.is_dir():
            return None
        if self._intact(path, stage, key):
            return path
        _remove(path)
        return None

    def _intact(self, path: Path, stage: str, key: str) -> bool:
        try:
            entry = json.loads((path / ENTRY).read_text(encoding="utf-8"))
            files = entry["files"]
            if entry.get("stage") != stage or entry.get("key") != key or not isinstance(files, dict):
                return False
            if sorted(files) != _files(path):
                return False
            return all(_sha256(path / rel) == digest for rel, digest in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def put(self, stage: str, key: str, fill: Callable[[Path], None]) -> Path | None:
        """Create the entry with `fill(tmpdir)` and publish it atomically. Returns its path, or None
        when caching is disabled or the cache directory cannot be written (a cache never fails a build)."""
        if not self.enabled:
            return None
        final = self._dir(stage, key)
        tmp = final.parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            mark(self.root)
            tmp.mkdir(parents=True)
            fill(tmp)
            files = {rel: _sha256(tmp / rel) for rel in _files(tmp)}
            (tmp / ENTRY).write_text(json.dumps({"stage": stage, "key": key, "files": files}, indent=1),
                                     encoding="utf-8")
            if final.exists():
                if self._intact(final, stage, key):      # someone else stored it first: keep theirs
                    _remove(tmp)
                    return final
                _remove(final)
            os.rename(tmp, final)
            return final
        except OSError:
            _remove(tmp)
            return None
        except BaseException:
            _remove(tmp)
            raise

    # -- maintenance (edgecompile cache info|clear) ----------------------------------------------
    def info(self) -> dict:
        """Sizes and entry counts: one row per stage, plus the other cache areas (e.g. trained weights)."""
        areas = []
        stages = self.root / STAGES_DIR
        if stages.is_dir():
            for d in sorted(p for p in stages.iterdir() if p.is_dir()):
                entries = [e for e in d.iterdir() if e.is_dir() and not e.name.startswith(".")]
                areas.append({"name": d.name, "kind": "stage", "entries": len(entries), "bytes": _du(d)})
        if self.root.is_dir():
            for d in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != STAGES_DIR):
                areas.append({"name": d.name, "kind": "other", "entries": sum(1 for _ in d.iterdir()),
                              "bytes": _du(d)})
        return {"path": str(self.root), "exists": self.root.is_dir(), "areas": areas,
                "bytes": sum(a["bytes"] for a in areas)}

    def area_names(self) -> list[str]:
        return [a["name"] for a in self.info()["areas"]]

    def clear(self, names: list[str] | None = None) -> dict:
        """Remove the named areas (stages such as `bundle`, `export`, or others such as `models`),
        or everything under the cache directory when `names` is None."""
        if self.root.is_dir() and any(self.root.iterdir()) and not is_marked(self.root):
            raise ConfigError(f"{self.root} does not look like EdgeCompile's cache (no {MARKER} marker file); "
                              "refusing to delete anything in it",
                              hint="check EDGECOMPILE_CACHE; if it really is the cache, remove it yourself")
        before = self.info()
        removed = []
        for area in before["areas"]:
            if names is not None and area["name"] not in names:
                continue
            base = self.root / STAGES_DIR if area["kind"] == "stage" else self.root
            _remove(base / area["name"])
            removed.append(area)
        if names is None and self.root.is_dir():
            for p in self.root.iterdir():               # stray files, tmp dirs (the marker stays)
                if p.name != MARKER:
                    _remove(p)
        return {"path": str(self.root), "removed": removed, "bytes": sum(a["bytes"] for a in removed)}


def _du(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass
