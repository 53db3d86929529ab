"""Records of artifacts already hashed, so that loading an unchanged bundle again does not re-hash it.

`runtime.load` checks every artifact's sha256 before an engine sees it; for a text bundle that is most of
what a fresh process spends beyond the engine itself (58 MB of MiniLM INT8: ~40 ms). A record kept in the
user's cache (`$EDGECOMPILE_CACHE/verified/`, else `~/.cache/edgecompile/verified/`) says "this file, as
identified by its device, inode, size, mtime and ctime, had this sha256". Any write to the file, a
rename over it or a `touch` changes its ctime, which no unprivileged user can set back, so a changed file
never matches and is hashed again. As in git's index, a file whose ctime is within `RACY_SECONDS` of the
moment it was hashed is not recorded: a coarse filesystem clock (FAT on SD cards: 2 s) could otherwise
hide a write in the same tick.

`edgecompile verify`, signing and builds always hash everything; `EDGECOMPILE_REVERIFY=1` makes
`runtime.load` do the same. A record that is missing, unreadable, malformed or unwritable (a read-only
home on a device) only means hashing: it is never an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

RACY_SECONDS = 3
_LIMIT = 1 << 20        # a record lists a bundle's artifacts: far below this


def reverify_forced() -> bool:
    return os.environ.get("EDGECOMPILE_REVERIFY", "").strip() not in ("", "0")


def identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _record_path(bundle_dir: Path) -> Path | None:
    try:
        from edgecompile.cache import cache_dir

        key = hashlib.sha256(os.fsencode(os.path.realpath(bundle_dir))).hexdigest()[:40]
        return cache_dir() / "verified" / f"{key}.json"
    except (OSError, RuntimeError):       # no home directory to resolve
        return None


class Records:
    """The hashes recorded for one bundle directory: {artifact: [sha256, *identity]}."""

    def __init__(self, bundle_dir: Path):
        self.path = _record_path(bundle_dir)
        self.known: dict[str, list] = {}
        self.fresh: dict[str, list] = {}
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(_LIMIT + 1)[:_LIMIT])
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):
            self.known = {k: v for k, v in data["artifacts"].items() if isinstance(v, list)}

    def matches(self, rel: str, sha256: str, st: os.stat_result) -> bool:
        """True when `rel` was hashed to `sha256` and has not changed since (same identity)."""
        return self.known.get(rel) == [sha256, *identity(st)]

    def hashed(self, rel: str, sha256: str, st: os.stat_result) -> None:
        """`rel` was just hashed to `sha256` (and matched the manifest): record it unless racy."""
        if st.st_ctime_ns < time.time_ns() - RACY_SECONDS * 1_000_000_000:
            self.fresh[rel] = [sha256, *identity(st)]

    def save(self, names) -> None:
        """Keep the records of `names` (the artifacts just checked); written atomically, errors ignored."""
        if self.path is None or not self.fresh:
            return
        merged = {n: self.fresh.get(n) or self.known.get(n) for n in names}
        merged = {n: v for n, v in merged.items() if v}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"artifacts": merged}, f)
            os.replace(tmp, self.path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
