"""Model sources: what `edgecompile build MODEL` accepts.

* a built-in example by name (`digits`) or by path (`models/digits`);
* any directory that is a Python package defining `source() -> TorchModelSource`;
* a plain `.onnx` file (data from `--data FILE.npz`);
* a Hugging Face causal-LM directory or a `.gguf` file (edgecompile.compiler.decoder).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgecompile.data import Dataset, TensorSpec, load_npz, parse_spec
from edgecompile.errors import DataError, ModelLoadError

BUILTIN_MODELS = ("digits", "digits_small", "resnet18", "mobilenetv2", "fashion", "diabetes", "shapes")


@dataclass
class TorchModelSource:
    """A torch model plus its dataset binding and task metric."""

    name: str
    create: Callable[[], Any]                  # -> trained torch.nn.Module in eval mode
    inputs: list[TensorSpec]
    outputs: list[str]
    load_split: Callable[[str], Dataset]
    splits: tuple[str, ...]
    metric: str                                # see edgecompile.verify.metrics
    default_calibration: str
    default_evaluation: str
    train_split: str | None = None
    preprocessing: dict = field(default_factory=dict)
    class_labels: list[str] | None = None
    fingerprint: str = ""                      # hash of the definition (cache keys, bundle_id)
    data_files: tuple = ()                     # files the model reads (weights, vocab ...): fingerprinted too
    kind: str = "torch"
    frontend: dict | None = None               # manifest "frontend" (e.g. detection decoding), see runtime
    _module: Any = field(default=None, repr=False)

    def module(self):
        if self._module is None:
            self._module = self.create()
        return self._module

    def dataset(self, split: str) -> Dataset:
        if split not in self.splits:
            raise DataError(f"model {self.name!r} has no data split {split!r}",
                            hint=f"splits: {', '.join(self.splits)}")
        return self.load_split(split)


@dataclass
class OnnxModelSource:
    name: str
    path: Path
    inputs: list[TensorSpec]
    outputs: list[str]
    fingerprint: str
    metric: str = "top1"
    preprocessing: dict = field(default_factory=dict)
    class_labels: list[str] | None = None
    kind: str = "onnx"
    default_calibration: str | None = None
    default_evaluation: str | None = None
    splits: tuple[str, ...] = ()
    train_split: str | None = None
    frontend: dict | None = None
    parity: dict | None = None                 # a source whose export was parity-checked elsewhere (none here)


ModelSource = TorchModelSource | OnnxModelSource


def resolve_source(spec: str | Path, task: str | None = None, *, lora: str | Path | None = None) -> ModelSource:
    """`lora`: a PEFT LoRA adapter directory, merged into a Hugging Face encoder's weights before export."""
    if lora is not None:
        return _with_lora(spec, task, lora)
    text = str(spec)
    path = Path(text)
    if task is not None and not (path / "config.json").is_file():
        from edgecompile.errors import ConfigError

        raise ConfigError(f"--task applies to Hugging Face model directories, not {text!r}",
                          hint="drop --task, or pass a directory with config.json")
    if text in BUILTIN_MODELS and not path.exists():
        return _from_module(importlib.import_module(f"edgecompile.models.{text}"), text)
    if path.suffix == ".onnx":
        return _onnx_source(path)
    if path.suffix == ".gguf" and path.is_file():
        from edgecompile.compiler.decoder import decoder_source

        return decoder_source(path)
    if path.is_dir():
        if (path / "__init__.py").is_file():
            builtin = Path(__file__).resolve().parent.parent / "models" / path.name
            if path.name in BUILTIN_MODELS and path.resolve() == builtin.resolve():
                return _from_module(importlib.import_module(f"edgecompile.models.{path.name}"), text)
            return _with_package_fingerprint(_from_module(_import_dir(path), text), path)
        if (path / "config.json").is_file():
            from edgecompile.compiler.decoder import decoder_source, is_decoder_dir

            if is_decoder_dir(path):             # causal LMs: text generation (edgecompile.compiler.decoder)
                return decoder_source(path)
            from edgecompile.compiler.hf import hf_source

            return hf_source(path, task)
        raise ModelLoadError(
            f"{text}: directory is not a model package (no __init__.py)",
            hint="pass a models/<name> package, a built-in name (digits, resnet18, mobilenetv2), a Hugging Face "
                 "model directory, a .gguf file or a .onnx file",
        )
    if not path.exists():
        raise ModelLoadError(
            f"model {text!r} not found",
            hint="pass a path to a .onnx file or model package, or a built-in name: " + ", ".join(BUILTIN_MODELS),
        )
    raise ModelLoadError(f"{text}: unsupported model file type {path.suffix or '(none)'!r}",
                         hint="pass a .onnx file or a model package directory")


def _with_lora(spec, task, lora) -> ModelSource:
    from edgecompile.compiler.hf import hf_source
    from edgecompile.errors import ConfigError

    path = Path(str(spec))
    plain_hf = path.is_dir() and (path / "config.json").is_file() and not (path / "__init__.py").is_file()
    if plain_hf:
        from edgecompile.compiler.decoder import is_decoder_dir

        if not is_decoder_dir(path):
            return hf_source(path, task, lora=lora)
    src = None if plain_hf else resolve_source(spec, task)
    if src is None or src.kind != "hf":
        raise ConfigError(f"--lora applies to Hugging Face encoder/classifier models, not {str(spec)!r}",
                          hint="pass a Hugging Face model directory (or a package such as models/minilm)")
    return hf_source(src.directory, src.task, name=src.name, lora=lora)


def _import_dir(path: Path):
    name = f"_edgecompile_user_model_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                  submodule_search_locations=[str(path)])
    for stale in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[stale]         # a rebuild in this process must run the package's current code
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(
            f"{path}: importing the model package failed: {exc.__class__.__name__}: {exc}",
            hint="run `python -c 'import ...'` on the package to see the full error, or use --debug",
        ) from exc
    return module


def _with_package_fingerprint(src, path: Path):
    """A user package's fingerprint covers every file of the package and the data files it declares, whatever
    fingerprint its author set (an empty or stale one would let an edited model.py hit the cache)."""
    import dataclasses

    if not dataclasses.is_dataclass(src) or not hasattr(src, "fingerprint"):
        return src
    content = package_fingerprint(path, getattr(src, "data_files", ()) or ())
    combined = hashlib.sha256(f"{src.fingerprint}\0{content}".encode()).hexdigest()
    return dataclasses.replace(src, fingerprint=combined)


def _from_module(module, text: str) -> TorchModelSource:
    factory = getattr(module, "source", None)
    if not callable(factory):
        raise ModelLoadError(f"{text}: the model package defines no source() function",
                             hint="define source() -> edgecompile.source.TorchModelSource in its __init__.py")
    return factory()


def _onnx_source(path: Path) -> OnnxModelSource:
    from edgecompile.compiler.inspection import graph_inputs, read_onnx

    from edgecompile.compiler.validate import validate_onnx

    proto = read_onnx(path)
    validate_onnx(path, proto)
    inputs = [TensorSpec(name, dims, dtype) for name, dims, dtype in graph_inputs(proto)]
    outputs = [o.name for o in proto.graph.output]
    metric = "top1" if _classifier_like(proto, inputs) else "output_closeness"
    return OnnxModelSource(name=path.stem, path=path, inputs=inputs, outputs=outputs,
                           fingerprint=onnx_fingerprint(path), metric=metric)


def _classifier_like(proto, inputs: list[TensorSpec]) -> bool:
    """A batch of samples in, [batch, classes] float scores out: judged on top-1 (agreement); any other
    model on output closeness against the reference."""
    from edgecompile.data import input_is_batched

    if not proto.graph.output or not any(input_is_batched(s) or (s.shape and s.shape[0] == 1) for s in inputs):
        return False
    tt = proto.graph.output[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] if tt.HasField("shape") else []
    return tt.elem_type in (1, 10, 11, 16) and len(dims) == 2 and (dims[1] or 0) > 1


def onnx_fingerprint(path: Path) -> str:
    """sha256 over the .onnx file and every external-data file it refers to (name and bytes)."""
    from edgecompile.runtime.onnxrefs import external_locations

    data = path.read_bytes()
    h = hashlib.sha256(b"onnx\0" + hashlib.sha256(data).digest())
    for loc in sorted(set(external_locations(data))):
        ext = path.parent / loc
        h.update(b"\0external\0" + loc.encode() + b"\0")
        h.update(_file_digest(ext) if ext.is_file() else b"missing")
    return h.hexdigest()


def package_fingerprint(path: Path, extra_files=()) -> str:
    """sha256 over every file of a model package directory (relative names and bytes, caches skipped) and
    any data files it declares: editing model.py, a weights file or a declared data file changes it."""
    h = hashlib.sha256(b"package\0")
    root = path.resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _skipped(p.relative_to(root)))
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + _file_digest(p))
    for extra in sorted(str(Path(f).resolve()) for f in extra_files):
        p = Path(extra)
        h.update(b"data\0" + extra.encode() + b"\0" + (_file_digest(p) if p.is_file() else b"missing"))
    return h.hexdigest()


def _skipped(rel: Path) -> bool:
    return any(part in ("__pycache__", ".git", ".pytest_cache") for part in rel.parts) or rel.suffix in (".pyc",)


def _file_digest(p: Path) -> bytes:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()


def load_data(spec: str | None, source: ModelSource, *, default: str | None) -> Dataset | None:
    """Resolve a data spec (or the source's default) to a Dataset validated against the model inputs."""
    spec = spec or default
    if spec is None:
        return None
    parsed = parse_spec(spec)
    if parsed and not spec.endswith(".npz"):
        name, split, start, stop = parsed
        if name != source.name:
            raise DataError(f"data spec {spec!r} names dataset {name!r}, but the model is {source.name!r}",
                            hint=f"use {source.name}:<split> or a .npz file")
        if not hasattr(source, "dataset"):
            raise DataError(f"model {source.name!r} has no bound dataset", hint="pass --data FILE.npz")
        ds = source.dataset(split)
        if start is not None or stop is not None:
            ds = ds.subset(start, stop, f"[{'' if start is None else start}:{'' if stop is None else stop}]")
        if len(ds) == 0:
            raise DataError(f"data spec {spec!r} selects zero samples", hint="widen the slice")
        return ds
    from edgecompile.runtime.textfile import is_text_file

    if is_text_file(spec) and getattr(source, "kind", None) == "hf":     # texts, tokenized like the source's own
        return source.text_file(spec)
    return load_npz(spec, source.inputs)
