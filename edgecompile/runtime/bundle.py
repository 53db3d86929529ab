"""Reading a bundle: a directory with `manifest.json`, hashed artifacts and derived reports.

Reading never imports torch and never unpickles: JSON + sha256 only. Writing (atomic staging and
swap) is the compiler's: `edgecompile.compiler.writer`.
"""
from __future__ import annotations

import hashlib
import json
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
            raise BundleError(
                f"{path}: no bundle directory there", hint="build one with `edgecompile build MODEL -o DIR`"
            )
        if not mpath.is_file():
            raise BundleError(
                f"{path}: not a bundle (no {MANIFEST})", hint="build one with `edgecompile build MODEL -o DIR`"
            )
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
                raise BundleError(
                    f"{self.path}: artifact {rel!r} is missing", hint="rebuild the bundle or restore the file"
                )
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
        from edgecompile.runtime.specs import TensorSpec

        return ([TensorSpec.from_dict(d) for d in self.manifest["inputs"]],
                [TensorSpec.from_dict(d) for d in self.manifest["outputs"]])

    def report(self) -> dict | None:
        p = self.path / "report.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def cache_dir(self) -> Path:
        p = self.path / "cache"
        p.mkdir(exist_ok=True)
        return p


def read_json(path: Path, what: str, error: type = BundleError, hint: str | None = None) -> Any:
    """Parse a JSON file; unreadable or malformed -> one-line `error` naming the file and `what` it is."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc})", hint=hint) from None
