"""Model sources: what `edgecompile build MODEL` accepts.

* a built-in example by name (`digits`) or by path (`models/digits`);
* any directory that is a Python package defining `source() -> TorchModelSource`;
* a plain `.onnx` file (data from `--data FILE.npz`).
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

BUILTIN_MODELS = ("digits", "digits_small", "resnet18", "mobilenetv2", "fashion")


@dataclass
class TorchModelSource:
    """A torch model plus its dataset binding and task metric."""

    name: str
    create: Callable[[], Any]                  # -> trained torch.nn.Module in eval mode
    inputs: list[TensorSpec]
    outputs: list[str]
    load_split: Callable[[str], Dataset]
    splits: tuple[str, ...]
    metric: str                                # see edgecompile.metrics
    default_calibration: str
    default_evaluation: str
    train_split: str | None = None
    preprocessing: dict = field(default_factory=dict)
    class_labels: list[str] | None = None
    fingerprint: str = ""                      # hash of the definition (cache keys, bundle_id)
    kind: str = "torch"
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


ModelSource = TorchModelSource | OnnxModelSource


def resolve_source(spec: str | Path) -> ModelSource:
    text = str(spec)
    path = Path(text)
    if text in BUILTIN_MODELS and not path.exists():
        return _from_module(importlib.import_module(f"edgecompile.models.{text}"), text)
    if path.suffix == ".onnx":
        return _onnx_source(path)
    if path.is_dir():
        if (path / "__init__.py").is_file():
            builtin = Path(__file__).resolve().parent.parent / "models" / path.name
            if path.name in BUILTIN_MODELS and path.resolve() == builtin.resolve():
                return _from_module(importlib.import_module(f"edgecompile.models.{path.name}"), text)
            return _from_module(_import_dir(path), text)
        if (path / "config.json").is_file():
            raise ModelLoadError(f"{text}: Hugging Face model directories are not supported yet",
                                 hint="export it to ONNX first (e.g. with optimum-cli) and pass the .onnx file")
        raise ModelLoadError(f"{text}: directory is not a model package (no __init__.py)",
                             hint="pass a models/<name> package, a built-in name (digits, resnet18, mobilenetv2) or a .onnx file")
    if not path.exists():
        raise ModelLoadError(f"model {text!r} not found",
                             hint="pass a path to a .onnx file or model package, or a built-in name: " + ", ".join(BUILTIN_MODELS))
    raise ModelLoadError(f"{text}: unsupported model file type {path.suffix or '(none)'!r}",
                         hint="pass a .onnx file or a model package directory")


def _import_dir(path: Path):
    name = f"_edgecompile_user_model_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                  submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"{path}: importing the model package failed: {exc.__class__.__name__}: {exc}",
                             hint="run `python -c 'import ...'` on the package to see the full error, or use --debug") from exc
    return module


def _from_module(module, text: str) -> TorchModelSource:
    factory = getattr(module, "source", None)
    if not callable(factory):
        raise ModelLoadError(f"{text}: the model package defines no source() function",
                             hint="define source() -> edgecompile.source.TorchModelSource in its __init__.py")
    return factory()


def _onnx_source(path: Path) -> OnnxModelSource:
    from edgecompile.inspection import graph_inputs, read_onnx

    proto = read_onnx(path)
    data = path.read_bytes()
    inputs = [TensorSpec(name, dims, dtype) for name, dims, dtype in graph_inputs(proto)]
    outputs = [o.name for o in proto.graph.output]
    return OnnxModelSource(name=path.stem, path=path, inputs=inputs, outputs=outputs,
                           fingerprint=hashlib.sha256(data).hexdigest())


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
        if source.kind != "torch":
            raise DataError(f"model {source.name!r} has no bound dataset", hint="pass --data FILE.npz")
        ds = source.dataset(split)
        if start is not None or stop is not None:
            ds = ds.subset(start, stop, f"[{'' if start is None else start}:{'' if stop is None else stop}]")
        if len(ds) == 0:
            raise DataError(f"data spec {spec!r} selects zero samples", hint="widen the slice")
        return ds
    return load_npz(spec, source.inputs)
