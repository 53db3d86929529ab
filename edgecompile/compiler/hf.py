"""Hugging Face model directories as a model source.

`hf_source(DIR, task)` reads `config.json`, the weights (`model.safetensors`, or `pytorch_model.bin`
loaded only with `weights_only=True`) and `tokenizer.json`; exports through optimum-onnx
(`optimum.exporters.onnx`) with dynamic batch and sequence axes; appends the pooling and
normalisation that the sentence-transformers config declares (`modules.json`, `1_Pooling/`) to
the graph, so that the graph's output is the sentence embedding; and checks parity against the
torch model on the task metric (per-sentence embedding cosine and nearest-neighbour retrieval
agreement over real sentences, or top-1 agreement for classifiers), not on a max-abs tolerance.

The exported, parity-checked ONNX is cached in `$EDGECOMPILE_CACHE/hf-export/<key>/`. From there
on the pipeline treats the source like an `.onnx` source whose FP32 reference is that graph
under ONNX Runtime; `write_frontend` adds the tokenizer to the bundle as a hashed artifact and
returns the manifest's `frontend` record for `edgecompile.runtime.text.TextFrontend`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path


from edgecompile.data import Dataset, TensorSpec
from edgecompile.compiler.hf_export import EMBEDDING_OUTPUT, MIN_AGREEMENT, MIN_COSINE, OPSET  # noqa: F401
from edgecompile.compiler.hf_export import SAFETENSORS, TORCH_BIN, has_classification_head, tokenizer_file
from edgecompile.errors import ConfigError, DataError, ModelLoadError

TASKS = ("feature-extraction", "text-classification")
BUCKETS = (16, 32, 64, 128, 256, 512)
# config.json model_type -> onnxruntime.transformers.optimizer model_type (encoders fuse as "bert")
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                   "electra": "bert", "mpnet": "bert", "bart": "bart", "gpt2": "gpt2", "t5": "t5"}


@dataclass
class HfModelSource:
    name: str
    directory: Path
    task: str
    inputs: list[TensorSpec]
    outputs: list[str]
    fingerprint: str
    metric: str
    pooling: str | None                 # feature-extraction: a POOLING_KEYS name (mean, cls, max, ...)
    normalize: bool
    max_length: int
    class_labels: list[str] | None = None
    scoring: str | None = None          # text-classification: softmax | sigmoid | none (scoring_rule)
    model_type: str = "bert"            # onnxruntime.transformers.optimizer's name for the fusions
    kind: str = "hf"
    preprocessing: dict = field(default_factory=dict)
    splits: tuple[str, ...] = ("eval", "calib", "train")
    default_calibration: str | None = None
    default_evaluation: str | None = None
    train_split: str | None = None
    parity: dict | None = None
    frontend: dict | None = None        # written with the tokenizer artifact by write_frontend (pipeline)
    path: Path | None = None            # the exported ONNX (set by hf_source)
    lora: object = None                 # an edgecompile.compiler.lora.Adapter merged before export
    adapter: dict | None = None         # its record (path, sha256, r, alpha, targets) for the manifest
    tokenizer_path: Path | None = None  # tokenizer.json: the directory's (None), or converted from a slow tokenizer
    _tokenizer: object = field(default=None, repr=False)

    def __post_init__(self):
        self.tokenizer_path = self.tokenizer_path or self.directory / "tokenizer.json"

    # -- data ------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path, self.max_length)
        return self._tokenizer

    @property
    def corpus(self) -> str:
        return "polarity" if self.task == "text-classification" else "lee"

    def texts(self, split: str) -> list[str]:
        from edgecompile.compiler import textdata

        return textdata.corpus_split(self.corpus, split)

    def dataset(self, split: str) -> Dataset:
        if split not in self.splits:
            raise DataError(
                f"model {self.name!r} has no data split {split!r}", hint=f"splits: {', '.join(self.splits)}"
            )
        feeds, truncated = tokenize(self.tokenizer(), self.texts(split), [s.name for s in self.inputs],
                                    self.max_length)
        if truncated:
            warnings.warn(f"{self.name}:{split}: {len(truncated)} text(s) truncated to {self.max_length} tokens",
                          RuntimeWarning, stacklevel=2)
        # the corpus split lets `baseline`/`check` rebuild these tokens with the bundle's own tokenizer
        return Dataset(f"{self.name}:{split}", feeds, meta={"texts": f"{self.corpus}:{split}"})

    def text_file(self, path) -> Dataset:
        """`--data` given as a text file (edgecompile.runtime.textfile), tokenized like the corpora."""
        from edgecompile.runtime.textfile import text_file_dataset

        return text_file_dataset(path, self.tokenizer(), self.frontend_spec())

    # -- bundle --------------------------------------------------------------------------
    def frontend_spec(self) -> dict:
        return {"kind": "text", "task": self.task, "tokenizer": "tokenizer.json", "max_length": self.max_length,
                "buckets": buckets(self.max_length),
                "input_names": [s.name for s in self.inputs], "output": self.outputs[0],
                "pooling": self.pooling, "normalize": self.normalize,
                "pooling_applied": "graph" if self.task == "feature-extraction" else None,
                "labels": self.class_labels, "scoring": self.scoring}

    def write_frontend(self, writer) -> dict:
        """Copy the tokenizer into the bundle (a hashed artifact); the manifest's `frontend` record."""
        shutil.copyfile(self.tokenizer_path, writer.path("tokenizer.json"))
        writer.add_artifact("tokenizer.json", "tokenizer")
        return self.frontend_spec()


def candidate_graph_passes(plan, model, evaluator, records):
    """`--backend auto` candidates of a Hugging Face encoder: ORT's transformer fusions for the ORT
    candidate, onnxslim for the others (`plan.graph_passes` runs none before the split)."""
    from edgecompile.compiler import registry
    from edgecompile.passes.base import PassManager, default_instruments

    p = registry.get_pass("transformer_fusion")(plan.source.model_type) if plan.backend == "ort" \
        else registry.get_pass("simplify")()
    pm = PassManager([p], default_instruments(evaluator))
    model = pm.run(model)
    records.extend(pm.records)
    return model


# -- tokenization (shared with the runtime's rules, see edgecompile.runtime.text) ---------------

# models whose position ids start after the padding index (position = padding_idx + 1 + k, RoBERTa's
# create_position_ids_from_input_ids): max_position_embeddings - padding_idx - 1 tokens fit (514 -> 512)
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer",
                            "data2vec-text", "roberta-prelayernorm", "xmod", "ibert", "luke", "markuplm", "esm"}


def usable_positions(config: dict) -> int:
    """How many tokens the model's position embeddings take."""
    positions = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in PADDING_OFFSET_POSITIONS:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return positions


def scoring_rule(config: dict, n_labels: int) -> str:
    """How a sequence-classification head's logits become scores, by transformers' own rule (its
    text-classification pipeline): `problem_type` "regression" -> none (raw values); "multi_label_classification",
    or a single label (cross-encoders, binary heads with one logit) -> sigmoid per label; else softmax."""
    problem = config.get("problem_type")
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or n_labels == 1:
        return "sigmoid"
    return "softmax"


def load_tokenizer(path: Path, max_length: int):
    from edgecompile.runtime.tokenizer import read_tokenizer_json

    return read_tokenizer_json(path, max_length, error=ModelLoadError,
                               hint="save a fast tokenizer: AutoTokenizer.from_pretrained(...).save_pretrained(DIR)")


def buckets(max_length: int) -> list[int]:
    return [b for b in BUCKETS if b < max_length] + [max_length]


def tokenize(tok, texts: list[str], input_names: list[str], max_length: int) -> tuple[dict, list[int]]:
    """Token arrays padded to a length bucket (the runtime's rule); indices of truncated texts."""
    from edgecompile.runtime.text import tokenize as runtime_tokenize

    return runtime_tokenize(tok, texts, input_names, buckets(max_length), max_length)


# -- the source ---------------------------------------------------------------------------------

def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and not (path / "__init__.py").is_file()


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable {what} ({exc.__class__.__name__})",
                             hint="the directory must be a complete Hugging Face model (save_pretrained)") from None


def _fingerprint(directory: Path, task: str) -> str:
    h = hashlib.sha256(f"hf/v1\0{task}\0".encode())
    for p in sorted(directory.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."):
            h.update(p.relative_to(directory).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


# sentence-transformers' pooling modes (1_Pooling/config.json) -> our names (runtime.text.pool, add_pooling)
POOLING_KEYS = (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                ("max", "pooling_mode_max_tokens"), ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
                ("weightedmean", "pooling_mode_weightedmean_tokens"), ("lasttoken", "pooling_mode_lasttoken"))


def _pooling(directory: Path) -> tuple[str, bool, bool]:
    """(pooling mode, normalize, declared by a sentence-transformers config)."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return "mean", False, False
    modules = _read_json(modules_file, "modules.json")
    types = [m.get("type", "") for m in modules]
    normalize = any(t.endswith("Normalize") for t in types)
    pool = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pool is None:
        return "cls", normalize, True
    cfg = _read_json(directory / pool.get("path", "1_Pooling") / "config.json", "pooling config")
    modes = [m for m, key in POOLING_KEYS if cfg.get(key)]
    if len(modes) != 1:
        raise ModelLoadError(
            f"{directory}: pooling config enables {modes or 'no mode'}; exactly one of "
            f"{', '.join(m for m, _ in POOLING_KEYS)} is supported",
            hint="edit 1_Pooling/config.json to a single pooling mode",
        )
    return modes[0], normalize, True


def hf_source(directory: str | Path, task: str | None = None, *, name: str | None = None,
              lora: str | Path | None = None) -> HfModelSource:
    """A Hugging Face model directory as a source: exported (or from the cache) and parity-checked.
    `lora`: a PEFT LoRA adapter directory merged into the weights before export (edgecompile.compiler.lora)."""
    directory = Path(directory)
    adapter = None
    if lora is not None:
        from edgecompile.compiler.lora import read_adapter

        adapter = read_adapter(lora)
    config = _read_json(directory / "config.json", "config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{directory}/config.json has no model_type", hint="not a transformers model directory")
    if not any((directory / n).is_file() for n in (*SAFETENSORS, *TORCH_BIN)):
        raise ModelLoadError(f"{directory}: no model.safetensors or pytorch_model.bin (nor a sharded index of them)",
                             hint="save the model with save_pretrained (safetensors preferred)")
    tokenizer_path = tokenizer_file(directory)        # the directory's, or converted from a slow tokenizer
    archs = config.get("architectures") or []
    default_task = "text-classification" if has_classification_head(config) else "feature-extraction"
    task = task or default_task
    if task not in TASKS:
        raise ConfigError(f"unsupported --task {task!r}", hint=f"one of: {', '.join(TASKS)}")
    if task == "text-classification" and archs and default_task != task:
        raise ConfigError(f"{directory} holds {', '.join(archs)}, with no sequence-classification head: "
                          "--task text-classification would export a randomly initialised one",
                          hint="fine-tune a classification head first, or use --task feature-extraction")
    st_cfg = directory / "sentence_bert_config.json"
    max_length = (
        int(_read_json(st_cfg, "sentence_bert_config.json").get("max_seq_length", 512))
        if st_cfg.is_file()
        else int(_read_json(directory / "tokenizer_config.json", "tokenizer_config.json").get("model_max_length", 512))
        if (directory / "tokenizer_config.json").is_file()
        else 512
    )
    max_length = min(max_length, usable_positions(config))
    pooling, normalize = (None, False)
    labels = scoring = None
    if task == "feature-extraction":
        pooling, normalize, _ = _pooling(directory)
        outputs, metric = [EMBEDDING_OUTPUT], "retrieval_agreement"
    else:
        id2label = config.get("id2label") or {}
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label) or 2)]
        scoring = scoring_rule(config, len(labels))
        # a regression head's values have no decision to agree on: they must stay close to FP32's
        outputs, metric = ["logits"], "output_closeness" if scoring == "none" else "top1_agreement"
    src = HfModelSource(
        name=name or directory.resolve().name,
        directory=directory,
        task=task,
        inputs=[],
        outputs=outputs,
        fingerprint=_fingerprint(directory, task) if adapter is None else hashlib.sha256(
            f"{_fingerprint(directory, task)}\0lora\0{adapter.sha256}".encode()).hexdigest(),
        metric=metric,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        class_labels=labels,
        scoring=scoring,
        tokenizer_path=tokenizer_path,
        model_type=ORT_MODEL_TYPES.get(config["model_type"], "bert"),
        lora=adapter,
        adapter=adapter.record() if adapter is not None else None,
    )
    src.default_evaluation = f"{src.name}:eval"
    src.default_calibration = f"{src.name}:calib"
    from edgecompile.compiler.hf_export import _export_cached

    _check_vocabulary(src, config)
    _export_cached(src)
    unmakeable = [s.name for s in src.inputs if s.name not in TEXT_INPUTS]
    if unmakeable:
        raise ConfigError(f"{directory}: the {task} export takes inputs {unmakeable} that text alone cannot make",
                          hint=f"text bundles feed {', '.join(TEXT_INPUTS)}; export this model yourself and "
                               "build the ONNX file with --data")
    return src


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")   # what runtime.text.tokenize makes


def _check_vocabulary(src: HfModelSource, config: dict) -> None:
    """A tokenizer whose ids run past the embedding table belongs to another model: ONNX Runtime would
    stop on the first such token with an out-of-bounds Gather."""
    size = config.get("vocab_size")
    if not isinstance(size, int) or size <= 0:
        return
    top = max(src.tokenizer().get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= size:
        raise ModelLoadError(f"{src.directory}: tokenizer.json has token ids up to {top}, but config.json's "
                             f"vocab_size is {size}: the tokenizer is not this model's",
                             hint="save the model's own tokenizer with it (AutoTokenizer.save_pretrained)")


# -- export + parity ------------------------------------------------------------------------------
