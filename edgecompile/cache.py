"""Where EdgeCompile keeps cached work: `$EDGECOMPILE_CACHE`, else the user's cache directory."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    env = os.environ.get("EDGECOMPILE_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecompile"
    return base


# The marker that says "this directory is EdgeCompile's cache" (the CACHEDIR.TAG convention, so backup
# tools skip it too). `cache clear` refuses to empty a directory without it.
MARKER = "CACHEDIR.TAG"
MARKER_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
               "# This directory is EdgeCompile's build cache (EDGECOMPILE_CACHE).\n")


def mark(root: Path) -> None:
    """Create `root` if needed and make sure it carries the cache marker."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if not marker.is_file():
        try:
            marker.write_text(MARKER_TEXT, encoding="utf-8")
        except OSError:
            pass


def is_marked(root: Path) -> bool:
    marker = root / MARKER
    try:
        return marker.is_file() and not marker.is_symlink() and marker.read_text(encoding="utf-8").startswith(
            MARKER_TEXT.splitlines()[0])
    except (OSError, UnicodeDecodeError):
        return False


def subdir(*parts: str) -> Path:
    mark(cache_dir())
    path = cache_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_key(*items: Any) -> str:
    """A sha256 over JSON-serialisable items (sorted keys), the content address of cached work."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()
