"""The build configuration: a validated TOML schema whose tables mirror the CLI flags.

Each table is a frozen dataclass; field metadata carries allowed values. Unknown keys and wrong
types are ConfigErrors naming the key and what is allowed. `Config.with_overrides` applies
flags (dotted keys) on top of a file, so a flag always wins over its key.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.compiler.schema import bounded as _bounded
from edgecompile.compiler.schema import choices as _choices
from edgecompile.compiler.schema import range_text
from edgecompile.errors import ConfigError
from edgecompile.targets.openvino.config import OpenVinoSection   # each backend owns its table
from edgecompile.targets.tensorrt.config import TensorRtSection
from edgecompile.targets.tvm.config import TvmSection

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "auto")


@dataclass(frozen=True)
class ModelSection:
    source: str | None = None
    task: str | None = None             # Hugging Face directories: feature-extraction | text-classification
    lora: str | None = None             # Hugging Face directories: a PEFT LoRA adapter merged before export


@dataclass(frozen=True)
class BuildSection:
    target: str = "cpu"
    backend: str | None = None
    precision: str | None = _choices(*PRECISIONS, default=None)   # None: the profile's default
    strict: bool = False
    force: bool = False
    threads: int | None = _bounded(None, 1, 4096)


@dataclass(frozen=True)
class DataSection:
    calibration: str | None = None     # "digits:train[:256]" or a .npz path
    evaluation: str | None = None      # "digits:test" or a .npz path
    annotations: str | None = None     # COCO-style gt.json for a .onnx detector's --data images (metric map)


@dataclass(frozen=True)
class QuantizeSection:
    # auto: dynamic for a model whose inputs are all integer (token ids: transformers), static otherwise
    mode: str = _choices("auto", "static", "dynamic", "qat", default="auto")
    # static: which ops get Q/DQ. all: every op ONNX Runtime's QDQ registry lists; matmul: the inputs of
    # MatMul/Gemm only (transformers: norms, softmax, GELU and residual adds stay float); auto: matmul for a
    # model whose inputs are all integer (token ids), all otherwise
    ops: str = _choices("auto", "all", "matmul", default="auto")
    calibrate: str = _choices("minmax", "entropy", "percentile", "search", "sample-mean", default="search")
    calib_samples: int = 256
    percentile: float = 99.99          # for calibrate = "percentile": clip |x| at this percentile
    per_channel: bool = True
    activations: str | None = _choices("uint8", "int8", default=None)   # None: the target's preset
    weights: str | None = _choices("int8", "uint8", default=None)
    symmetric_activations: bool | None = None
    max_accuracy_drop: float | None = None
    qat_epochs: int = 3
    block_size: int | None = None      # weight-only int4/int8 (decoders): block along K; None: 32
    equalize: bool = True              # static: cross-layer equalization before calibrating (passes/equalize.py)
    bias_correction: bool = True       # static: empirical bias correction after (passes/bias_correction.py)
    float_stem_channels: int | None = None   # static: convs on <= this many input channels stay float; None: preset
    # SmoothQuant-style smoothing (transformers; passes/smoothquant.py), from calibration data; 0 = off. It
    # divides the LayerNorm outputs read by MatMul/Attention weights (static ops = "matmul": every MatMul
    # activation). None: 0.5, or 0.95 for static ops = "matmul" (one per-tensor range per activation needs
    # more of the range moved into the per-channel weights; NNCF's default for transformer MatMuls)
    smooth_alpha: float | None = None
    # static: learned weight rounding (passes/adaround.py); "auto": only when PTQ is over the accuracy bound
    adaround: bool | str = _choices("auto", default="auto")


@dataclass(frozen=True)
class Fp16Section:
    """`--precision fp16` (passes/fp16.py): graph I/O type and the ops kept in FP32."""
    io_types: str = _choices("float32", "float16", default="float32")   # float32: Casts at the boundary
    block_list: list[str] | None = None      # op types kept in FP32; None: passes.fp16.DEFAULT_BLOCK_LIST


@dataclass(frozen=True)
class PruneSection:
    ratio: float = 0.0                  # fraction of channels removed per prunable layer, in [0, 1)
    finetune_epochs: int = 3
    distill: bool = True                # fine-tune with the unpruned model as teacher (logit KD)
    importance: str = _choices("l1", "l2", default="l1")
    global_pruning: bool = False
    iterative_steps: int = 1
    ignored_layers: list[str] = field(default_factory=list)   # module names; the classifier is always kept
    round_to: int | None = None         # keep channel counts multiples of this (e.g. 8 for SIMD)
    target: str | None = _choices("params", "flops", "latency", default=None)
    target_ratio: float | None = None   # with target: prune until target <= target_ratio x unpruned (ratio = cap)
    temperature: float = 4.0
    alpha: float = 0.7                  # weight of the KD term (1 - alpha: cross-entropy on labels)
    distill_features: list[str] = field(default_factory=list)  # layer names for feature KD
    finetune_lr: float = 1e-2             # Adam; the digits recipe (pruning removes most of the function)
    compare: bool = False               # also fine-tune without KD and report both

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"config key 'passes.prune.ratio' must be in [0, 1), got {self.ratio}",
                              hint="e.g. --prune 0.5 removes half of the channels of each prunable layer")
        if self.finetune_epochs < 0:
            raise ConfigError(f"config key 'passes.prune.finetune_epochs' must be >= 0, got {self.finetune_epochs}")
        if self.iterative_steps < 1:
            raise ConfigError(f"config key 'passes.prune.iterative_steps' must be >= 1, got {self.iterative_steps}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"config key 'passes.prune.round_to' must be >= 1, got {self.round_to}")
        if (self.target is None) != (self.target_ratio is None):
            raise ConfigError(
                "config keys 'passes.prune.target' and 'passes.prune.target_ratio' go together",
                hint='e.g. target = "flops", target_ratio = 0.5 (and ratio = the most to remove per layer)',
            )
        if self.target_ratio is not None and not 0.0 < self.target_ratio < 1.0:
            raise ConfigError(f"config key 'passes.prune.target_ratio' must be in (0, 1), got {self.target_ratio}")
        if self.temperature <= 0:
            raise ConfigError(f"config key 'passes.prune.temperature' must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"config key 'passes.prune.alpha' must be in [0, 1], got {self.alpha}")
        if self.finetune_lr <= 0:
            raise ConfigError(f"config key 'passes.prune.finetune_lr' must be > 0, got {self.finetune_lr}")


@dataclass(frozen=True)
class DistillSection:
    teacher: str | None = None          # a model (package path or built-in name); set -> the student is distilled
    epochs: int = 10
    temperature: float = 4.0
    alpha: float = 0.7
    features: list[str] = field(default_factory=list)   # "student_layer:teacher_layer" (or one name for both)
    feature_weight: float = 1.0
    lr: float = 3e-3
    compare: bool = False               # also train the student without KD (same epochs) and report both

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"config key 'passes.distill.epochs' must be >= 1, got {self.epochs}")
        if self.temperature <= 0:
            raise ConfigError(f"config key 'passes.distill.temperature' must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"config key 'passes.distill.alpha' must be in [0, 1], got {self.alpha}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'passes.distill.lr' must be > 0, got {self.lr}")


@dataclass(frozen=True)
class PassesSection:
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    prune: PruneSection = field(default_factory=PruneSection)
    distill: DistillSection = field(default_factory=DistillSection)
    fp16: Fp16Section = field(default_factory=Fp16Section)


@dataclass(frozen=True)
class AutoSection:
    """`--backend auto`: how long to measure each candidate (interleaved rounds)."""
    rounds: int = _bounded(7, 1, 1000)
    round_seconds: float = _bounded(0.08, 0.001, 60)     # per candidate per round


@dataclass(frozen=True)
class ServeSection:
    """`edgecompile serve`: the flags of the same names; edgecompile.serve.ServeOptions extends it."""
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 8
    max_queue_delay_ms: float = 5.0
    instances: int = 1
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 64.0
    insecure: bool = False
    cors_origins: list[str] = field(default_factory=list)
    threads: int | None = None
    replicas: int = 1                   # --ray only


@dataclass(frozen=True)
class ReportSection:
    formats: list[str] = field(default_factory=lambda: ["json", "md"],
                               metadata={"choices": ("json", "md", "html")})   # report.json is always written


@dataclass(frozen=True)
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    build: BuildSection = field(default_factory=BuildSection)
    data: DataSection = field(default_factory=DataSection)
    passes: PassesSection = field(default_factory=PassesSection)
    tvm: TvmSection = field(default_factory=TvmSection)
    openvino: OpenVinoSection = field(default_factory=OpenVinoSection)
    auto: AutoSection = field(default_factory=AutoSection)
    tensorrt: TensorRtSection = field(default_factory=TensorRtSection)
    report: ReportSection = field(default_factory=ReportSection)
    serve: ServeSection = field(default_factory=ServeSection)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, prefix="")

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} does not exist", hint="pass an existing TOML file with --config"
            )
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}", hint="check the file's syntax") from None
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """Apply dotted-key overrides (e.g. {"build.precision": "int8"}); None values are ignored."""
        data = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return Config.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _allowed_keys(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(
                f"unknown config key {dotted!r}",
                hint=f"allowed keys{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: {_allowed_keys(cls)}",
            )
        kwargs[key] = _coerce(hints[key], value, dotted, known[key])
    return cls(**kwargs)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp, value, dotted: str, fld: dataclasses.Field):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=dotted + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(arg, value, dotted, fld)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"config key {dotted!r} must be a list of {_type_name(item)}, got {value!r}")
        choices = fld.metadata.get("choices")
        bad = [v for v in value if choices and v not in choices]
        if bad:
            raise ConfigError(f"config key {dotted!r} has invalid value {bad[0]!r}",
                              hint=f"allowed values: {', '.join(choices)}")
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {dotted!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {dotted!r} must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {dotted!r} must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {dotted!r} must be a string, got {value!r}")
    bounds = fld.metadata.get("range")
    if bounds and isinstance(value, (int, float)) and not (
            (bounds[0] is None or value >= bounds[0]) and (bounds[1] is None or value <= bounds[1])):
        raise ConfigError(f"config key {dotted!r} must be in {range_text(*bounds)}, got {value!r}",
                          hint=f"set {dotted} to a value in {range_text(*bounds)}")
    choices = fld.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(
            f"config key {dotted!r} has invalid value {value!r}", hint=f"allowed values: {', '.join(choices)}"
        )
    return value


def find_default_config(cwd: Path | None = None) -> Path | None:
    """`edgecompile.toml` in the current directory, if present."""
    candidate = (cwd or Path.cwd()) / "edgecompile.toml"
    return candidate if candidate.is_file() else None


def token_inputs(input_dtypes) -> bool:
    """Every model input is an integer tensor (token ids: a transformer's text input)."""
    dtypes = [str(d) for d in input_dtypes]
    return bool(dtypes) and all(d.startswith(("int", "uint")) for d in dtypes)


def resolve_quantize_ops(ops: str, input_dtypes) -> str:
    """[passes.quantize] ops "auto" -> "matmul" for a token-id model (static INT8 of a transformer's norms,
    softmax and residual adds costs far more accuracy than it saves time; NNCF and TensorRT's BERT recipes
    quantize the MatMul inputs only), "all" otherwise."""
    if ops != "auto":
        return ops
    return "matmul" if token_inputs(input_dtypes) else "all"


def resolve_quantize_mode(mode: str, input_dtypes, backend: str) -> str:
    """[passes.quantize] mode "auto" -> "dynamic" when every model input is an integer tensor (token ids: the
    activations worth quantizing only exist inside the model, and per-tensor static ranges cost BERT-class
    encoders 20-50 pt of retrieval agreement) and the backend runs dynamic INT8 (ONNX Runtime, OpenVINO, or
    `auto` among them); else "static" (TensorRT and TVM take QDQ graphs)."""
    if mode != "auto":
        return mode
    return "dynamic" if token_inputs(input_dtypes) and backend in ("ort", "openvino", "auto") else "static"
