"""Reading a bundle: a directory with `manifest.json`, hashed artifacts and derived reports.

Reading never imports torch or onnx and never unpickles: JSON + sha256 only. Every open checks the
manifest against its schema (`edgecompile.runtime.schema`) and the link rules: each artifact is a regular
file with one link, reached from DIR without symlinks, and an ONNX artifact's external data files are
artifacts themselves. Writing (atomic staging and swap) is the compiler's: `edgecompile.compiler.writer`.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgecompile.errors import BundleError
from edgecompile.runtime.schema import SCHEMA_VERSION, check_manifest, check_relpath, parse_limited

__all__ = ["Bundle", "SCHEMA_VERSION", "MANIFEST", "DERIVED", "sha256_file", "read_json"]

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
DERIVED = ("report.json", "report.md", "report.html", "cache", SIGNATURE)
HINT = "rebuild the bundle or restore the original files"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _open_inside(root: Path, rel: str) -> int:
    """An O_RDONLY fd of root/rel reached without following any symlink below root; a regular file, one link."""
    parts = PurePosixPath(rel).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            # O_NONBLOCK: opening a FIFO planted as an artifact must not block (fstat below refuses it)
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if os.path.islink(os.path.join(root, *parts[:i + 1])):
                    via = "/".join(parts[:i + 1])
                    raise BundleError(f"{root}: artifact {rel!r} is reached through a symlink ({via}); "
                                      "bundles hold plain files only", hint=HINT) from None
                what = "is missing" if isinstance(exc, FileNotFoundError) else f"cannot be opened ({exc.strerror})"
                raise BundleError(f"{root}: artifact {rel!r} {what}", hint=HINT) from None
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{root}: artifact {rel!r} is not a regular file", hint=HINT)
        if st.st_nlink != 1:
            raise BundleError(f"{root}: artifact {rel!r} has {st.st_nlink} hard links (one expected: a hard link "
                              "can point at a file outside the bundle)", hint=HINT)
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass
class Bundle:
    path: Path
    manifest: dict
    raw: bytes = field(default=b"", repr=False)     # manifest.json's bytes as parsed (what a signature covers)

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True, reuse_hashes: bool = False) -> "Bundle":
        """`reuse_hashes`: skip re-hashing an artifact that a record in the user's cache shows unchanged since
        it last matched (runtime/verified.py; `runtime.load` only). The link rules are checked regardless."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise BundleError(
                f"{path}: no bundle directory there", hint="build one with `edgecompile build MODEL -o DIR`"
            )
        if mpath.is_symlink() or not mpath.is_file():
            raise BundleError(f"{path}: not a bundle (no {MANIFEST}, or it is not a plain file)",
                              hint="build one with `edgecompile build MODEL -o DIR`")
        try:
            raw = _read_limited(mpath)
        except OSError as exc:
            raise BundleError(f"{mpath}: cannot read the manifest ({exc.strerror})", hint=HINT) from None
        bundle = cls(path, check_manifest(parse_limited(raw, mpath), mpath), raw)
        if verify:
            bundle.verify(reuse_hashes=reuse_hashes)   # link rules + sha256 of every artifact
            bundle.check_external_data()    # then what the (now trusted) ONNX artifacts refer to
        else:                               # inspecting, never running: links only, artifacts not parsed
            bundle.check_links()
        return bundle

    def check_links(self) -> None:
        """Every artifact a regular file with one link, reached from DIR without symlinks."""
        for rel in sorted(self.manifest["artifacts"]):
            os.close(_open_inside(self.path, rel))

    def check_external_data(self) -> None:
        """ONNX artifacts' external data files must be listed (so link-checked and hashed) artifacts."""
        arts = self.manifest["artifacts"]
        for rel in sorted(arts):
            if rel.endswith(".onnx"):
                self._check_external(rel, arts)

    def _check_external(self, rel: str, arts: dict) -> None:
        from edgecompile.runtime.onnxrefs import ProtoError, external_locations

        fd = _open_inside(self.path, rel)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise BundleError(f"{self.path}: ONNX artifact {rel!r} is empty", hint=HINT)
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as buf:
                locations = external_locations(buf)
        except ProtoError as exc:
            raise BundleError(f"{self.path}: ONNX artifact {rel!r} is not a valid model file ({exc})",
                              hint=HINT) from None
        finally:
            os.close(fd)
        base = PurePosixPath(rel).parent
        for loc in sorted(set(locations)):
            field = f"external data of {rel!r}"
            check_relpath(loc, self.path / MANIFEST, field)
            target = str(base / loc) if str(base) != "." else loc
            if target not in arts:
                raise BundleError(f"{self.path}: ONNX artifact {rel!r} refers to external data {loc!r}, which is "
                                  "not a listed artifact of the bundle", hint=HINT)

    def check_signature(self, trusted_keys) -> str:
        """The id of the trusted key that signed this manifest; BundleError if unsigned or not trusted."""
        from edgecompile.runtime.signing import check_signature

        return check_signature(self.path, self.raw, trusted_keys)

    def verify(self, reuse_hashes: bool = False) -> list[str]:
        """Check every listed artifact (link rules, sha256); returns the checked names."""
        from edgecompile.runtime.verified import Records

        records = Records(self.path) if reuse_hashes else None
        checked = []
        for rel, info in sorted(self.manifest["artifacts"].items()):
            fd = _open_inside(self.path, rel)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if records is not None and records.matches(rel, info["sha256"], st):
                    checked.append(rel)
                    continue
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != info["sha256"]:
                raise BundleError(f"{self.path}: artifact {rel!r} fails its sha256 check (tampered or corrupted)",
                                  hint="rebuild the bundle or restore the original file")
            if records is not None:
                records.hashed(rel, digest, st)
            checked.append(rel)
        if records is not None:
            records.save(checked)
        return checked

    def _safe(self, rel: str) -> Path:
        check_relpath(rel, self.path / MANIFEST, "artifacts")
        return self.path / rel

    def artifact(self, role: str) -> Path:
        """Path of the (first) artifact with `role`, e.g. "model"."""
        for rel, info in sorted(self.manifest["artifacts"].items()):
            if info.get("role") == role:
                return self._safe(rel)
        raise BundleError(f"{self.path}: bundle has no {role!r} artifact", hint="rebuild the bundle")

    def artifacts_with_role(self, role: str) -> list[Path]:
        return [self._safe(r) for r, i in sorted(self.manifest["artifacts"].items()) if i.get("role") == role]

    def read_artifact_json(self, role: str) -> dict:
        """A JSON artifact (e.g. a build plan), size/depth-limited, required to be an object."""
        p = self.artifact(role)
        value = parse_limited(_read_limited(p), p, what=f"{role} file")
        if not isinstance(value, dict):
            raise BundleError(f"{p}: {role} file is not a JSON object", hint=HINT)
        return value

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
        if not p.is_file() or p.is_symlink():
            return None
        value = parse_limited(_read_limited(p), p, what="report")
        return value if isinstance(value, dict) else None

    def cache_dir(self) -> Path:
        p = self.path / "cache"
        if p.is_symlink():
            raise BundleError(f"{p} is a symlink; the bundle's cache must be a plain directory inside it",
                              hint="remove it (it is derived and rebuilt)")
        p.mkdir(exist_ok=True)
        return p


def _read_limited(path: Path, limit: int = 16 << 20) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit + 1)


def read_json(path: Path, what: str, error: type = BundleError, hint: str | None = None) -> Any:
    """Parse a JSON file; unreadable or malformed -> one-line `error` naming the file and `what` it is."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{path}: {what} is not valid JSON ({str(exc)[:200]})", hint=hint) from None
