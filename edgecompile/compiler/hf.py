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
import io
import json
import logging
import os
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompile.data import Dataset, TensorSpec
from edgecompile.errors import ConfigError, DataError, ExportError, ModelLoadError

TASKS = ("feature-extraction", "text-classification")
BUCKETS = (16, 32, 64, 128, 256, 512)
OPSET = 18
# Parity of the FP32 export against torch, on the task: every sentence embedding this close, and
# the nearest neighbours (retrieval) / top-1 classes all but this fraction the same.
MIN_COSINE = 0.9999
MIN_AGREEMENT = 0.99
EMBEDDING_OUTPUT = "sentence_embedding"
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
    pooling: str | None                 # mean | cls | max (feature-extraction)
    normalize: bool
    max_length: int
    class_labels: list[str] | None = None
    model_type: str = "bert"            # onnxruntime.transformers.optimizer's name for the fusions
    kind: str = "hf"
    preprocessing: dict = field(default_factory=dict)
    splits: tuple[str, ...] = ("eval", "calib", "train")
    default_calibration: str | None = None
    default_evaluation: str | None = None
    train_split: str | None = None
    parity: dict | None = None
    path: Path | None = None            # the exported ONNX (set by hf_source)
    _tokenizer: object = field(default=None, repr=False)

    # -- data ------------------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.directory / "tokenizer.json", self.max_length)
        return self._tokenizer

    def texts(self, split: str) -> list[str]:
        from edgecompile.compiler import textdata

        if self.task == "text-classification":
            sents, _ = textdata.polarity_sentences()
            ranges = {"eval": (0, 120), "calib": (120, 200), "train": (0, 200)}
            if split not in ranges:
                raise DataError(f"model {self.name!r} has no data split {split!r}", hint=f"splits: {', '.join(ranges)}")
            return sents[slice(*ranges[split])]
        return textdata.split_sentences(split)

    def dataset(self, split: str) -> Dataset:
        if split not in self.splits:
            raise DataError(f"model {self.name!r} has no data split {split!r}", hint=f"splits: {', '.join(self.splits)}")
        feeds, truncated = tokenize(self.tokenizer(), self.texts(split), [s.name for s in self.inputs],
                                    self.max_length)
        if truncated:
            warnings.warn(f"{self.name}:{split}: {len(truncated)} text(s) truncated to {self.max_length} tokens",
                          RuntimeWarning, stacklevel=2)
        return Dataset(f"{self.name}:{split}", feeds)

    # -- bundle --------------------------------------------------------------------------
    def frontend(self) -> dict:
        return {"kind": "text", "task": self.task, "tokenizer": "tokenizer.json", "max_length": self.max_length,
                "buckets": buckets(self.max_length),
                "input_names": [s.name for s in self.inputs], "output": self.outputs[0],
                "pooling": self.pooling, "normalize": self.normalize,
                "pooling_applied": "graph" if self.task == "feature-extraction" else None,
                "labels": self.class_labels}

    def write_frontend(self, writer) -> dict:
        """Copy the tokenizer into the bundle (a hashed artifact); the manifest's `frontend` record."""
        shutil.copyfile(self.directory / "tokenizer.json", writer.path("tokenizer.json"))
        writer.add_artifact("tokenizer.json", "tokenizer")
        return self.frontend()


# -- tokenization (shared with the runtime's rules, see edgecompile.runtime.text) ---------------

def load_tokenizer(path: Path, max_length: int):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ModelLoadError("text models need the `tokenizers` package", hint="pip install tokenizers") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable tokenizer.json ({str(exc).splitlines()[0][:200]})",
                             hint="save a fast tokenizer with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)") from None
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


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
    modes = [m for m, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                              ("max", "pooling_mode_max_tokens")) if cfg.get(key)]
    if len(modes) != 1:
        raise ModelLoadError(f"{directory}: pooling config enables {modes or 'no mode'}; one of mean, cls, max is supported",
                             hint="edit 1_Pooling/config.json to a single pooling mode")
    return modes[0], normalize, True


def hf_source(directory: str | Path, task: str | None = None, *, name: str | None = None) -> HfModelSource:
    """A Hugging Face model directory as a source: exported (or from the cache) and parity-checked."""
    directory = Path(directory)
    config = _read_json(directory / "config.json", "config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{directory}/config.json has no model_type", hint="not a transformers model directory")
    if not ((directory / "model.safetensors").is_file() or (directory / "pytorch_model.bin").is_file()):
        raise ModelLoadError(f"{directory}: no model.safetensors or pytorch_model.bin",
                             hint="save the model with save_pretrained (safetensors preferred)")
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(f"{directory}: no tokenizer.json (the bundle's runtime needs a fast tokenizer)",
                             hint="AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes one")
    archs = config.get("architectures") or []
    default_task = "text-classification" if any(a.endswith("ForSequenceClassification") for a in archs) \
        else "feature-extraction"
    task = task or default_task
    if task not in TASKS:
        raise ConfigError(f"unsupported --task {task!r}", hint=f"one of: {', '.join(TASKS)}")
    st_cfg = directory / "sentence_bert_config.json"
    max_length = int(_read_json(st_cfg, "sentence_bert_config.json").get("max_seq_length", 512)) if st_cfg.is_file() \
        else int(_read_json(directory / "tokenizer_config.json", "tokenizer_config.json").get("model_max_length", 512)) \
        if (directory / "tokenizer_config.json").is_file() else 512
    max_length = min(max_length, int(config.get("max_position_embeddings", 512)))
    pooling, normalize = (None, False)
    labels = None
    if task == "feature-extraction":
        pooling, normalize, _ = _pooling(directory)
        outputs, metric = [EMBEDDING_OUTPUT], "retrieval_agreement"
    else:
        id2label = config.get("id2label") or {}
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label) or 2)]
        outputs, metric = ["logits"], "top1_agreement"
    src = HfModelSource(name=name or directory.resolve().name, directory=directory, task=task, inputs=[], outputs=outputs,
                        fingerprint=_fingerprint(directory, task), metric=metric, pooling=pooling, normalize=normalize,
                        max_length=max_length, class_labels=labels,
                        model_type=ORT_MODEL_TYPES.get(config["model_type"], "bert"))
    src.default_evaluation = f"{src.name}:eval"
    src.default_calibration = f"{src.name}:calib"
    _export_cached(src)
    return src


# -- export + parity ------------------------------------------------------------------------------

def _quiet():
    """Silence transformers/optimum/torch loggers and warnings (the CLI prints one-line errors)."""
    for logger in ("transformers", "optimum", "torch.onnx", "torch", "onnxscript"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def _export_cached(src: HfModelSource) -> None:
    from edgecompile.cache import content_key, subdir
    from edgecompile.machine import toolchain_versions

    key = content_key("hf-export/v1", src.fingerprint, src.task, OPSET, toolchain_versions(), _code_key())
    entry = subdir("hf-export") / key[:32]
    meta_file = entry / "meta.json"
    if not meta_file.is_file():
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            inputs, parity = _export(src, tmp)
            (tmp / "meta.json").write_text(json.dumps({"inputs": inputs, "parity": parity}))
            try:
                tmp.rename(entry)
            except OSError:          # another process finished first: keep its entry
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_file.read_text())
    src.inputs = [TensorSpec(n, ("batch", "sequence"), "int64") for n in meta["inputs"]]
    src.parity = meta["parity"]
    src.path = entry / "model.onnx"


def _code_key() -> str:
    """The code the cached export depends on: this module, the corpora, tokenization/pooling and metrics."""
    import edgecompile

    root = Path(edgecompile.__file__).resolve().parent
    h = hashlib.sha256()
    for rel in ("compiler/hf.py", "compiler/textdata.py", "runtime/text.py", "metrics.py", "verify/textmetrics.py"):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()


def _load_torch_model(src: HfModelSource):
    _quiet()
    try:
        from transformers import AutoModel, AutoModelForSequenceClassification
    except ImportError:
        raise ModelLoadError("Hugging Face sources need transformers and optimum-onnx",
                             hint="pip install 'edgecompile[hf]'") from None
    cls = AutoModel if src.task == "feature-extraction" else AutoModelForSequenceClassification
    safetensors = (src.directory / "model.safetensors").is_file()
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(src.directory), local_files_only=True, use_safetensors=safetensors,
                                        weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"{src.directory}: loading the model failed: {msg}",
                             hint="check the directory is a complete save_pretrained output") from None
    return model.eval()


def _export(src: HfModelSource, out: Path) -> tuple[list[str], dict]:
    import onnx

    model = _load_torch_model(src)
    try:
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError:
        raise ModelLoadError("Hugging Face sources need optimum-onnx", hint="pip install 'edgecompile[hf]'") from None
    raw = out / "optimum"
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            onnx_export_from_model(model, str(raw), task=src.task, opset=OPSET, do_validation=False)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"optimum ONNX export ({src.task}) failed: {msg}",
                          hint="check that optimum-onnx supports this architecture and task; rerun with --debug") from exc
    proto = onnx.load(str(raw / "model.onnx"))
    inputs = [i.name for i in proto.graph.input]
    if src.task == "feature-extraction":
        proto = add_pooling(proto, src.pooling, src.normalize)
    onnx.save(proto, str(out / "model.onnx"))
    shutil.rmtree(raw, ignore_errors=True)
    src.inputs = [TensorSpec(n, ("batch", "sequence"), "int64") for n in inputs]
    parity = check_parity(src, model, out / "model.onnx")
    return inputs, parity


def add_pooling(proto, pooling: str, normalize: bool):
    """Append sentence-transformers pooling (+ L2 normalisation) to `last_hidden_state`; the graph's
    only output becomes `sentence_embedding` [batch, hidden]."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    hidden = next((o for o in g.output if o.name == "last_hidden_state"), None)
    if hidden is None:
        raise ExportError("the exported graph has no last_hidden_state output", hint="use --task text-classification?")
    width = hidden.type.tensor_type.shape.dim[2]
    nodes = []
    init = [numpy_helper.from_array(np.array([1], np.int64), "pool_axis1"),
            numpy_helper.from_array(np.array([2], np.int64), "pool_axis2")]
    nodes += [helper.make_node("Unsqueeze", ["attention_mask", "pool_axis2"], ["pool_mask3"]),
              helper.make_node("Cast", ["pool_mask3"], ["pool_maskf"], to=TensorProto.FLOAT)]
    if pooling == "mean":
        init.append(numpy_helper.from_array(np.array(1e-9, np.float32), "pool_eps"))
        nodes += [helper.make_node("Mul", ["last_hidden_state", "pool_maskf"], ["pool_masked"]),
                  helper.make_node("ReduceSum", ["pool_masked", "pool_axis1"], ["pool_sum"], keepdims=0),
                  helper.make_node("ReduceSum", ["pool_maskf", "pool_axis1"], ["pool_count0"], keepdims=0),
                  helper.make_node("Max", ["pool_count0", "pool_eps"], ["pool_count"]),
                  helper.make_node("Div", ["pool_sum", "pool_count"], ["pool_out"])]
    elif pooling == "cls":
        init.append(numpy_helper.from_array(np.array(0, np.int64), "pool_zero"))
        nodes += [helper.make_node("Gather", ["last_hidden_state", "pool_zero"], ["pool_out"], axis=1)]
    elif pooling == "max":
        init.append(numpy_helper.from_array(np.array(-1e9, np.float32), "pool_neg"))
        init.append(numpy_helper.from_array(np.array(1.0, np.float32), "pool_one"))
        nodes += [helper.make_node("Sub", ["pool_one", "pool_maskf"], ["pool_inv"]),
                  helper.make_node("Mul", ["pool_inv", "pool_neg"], ["pool_pen"]),
                  helper.make_node("Add", ["last_hidden_state", "pool_pen"], ["pool_masked"]),
                  helper.make_node("ReduceMax", ["pool_masked", "pool_axis1"], ["pool_out"], keepdims=0)]
    else:
        raise ExportError(f"unsupported pooling {pooling!r}", hint="mean, cls or max")
    if normalize:
        nodes.append(helper.make_node("LpNormalization", ["pool_out"], [EMBEDDING_OUTPUT], axis=-1, p=2))
    else:
        nodes.append(helper.make_node("Identity", ["pool_out"], [EMBEDDING_OUTPUT]))
    g.node.extend(nodes)
    g.initializer.extend(init)
    out = helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch_size", None])
    out.type.tensor_type.shape.dim[1].CopyFrom(width)
    del g.output[:]
    g.output.append(out)
    return proto


def check_parity(src: HfModelSource, model, onnx_path: Path) -> dict:
    import torch

    from edgecompile.metrics import get_metric, raw_similarity
    from edgecompile.runtime.text import pool
    from edgecompile.targets.ort import ort_outputs

    ds = src.dataset("eval")
    onnx_out = ort_outputs(onnx_path.read_bytes(), ds.batches(32))[0]
    torch_out = []
    with torch.no_grad():
        for feeds in ds.batches(32):
            res = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            if src.task == "feature-extraction":
                torch_out.append(pool(res.last_hidden_state.numpy(), feeds["attention_mask"],
                                            src.pooling, src.normalize))
            else:
                torch_out.append(res.logits.numpy())
    ref = np.concatenate(torch_out)
    sim = raw_similarity(onnx_out, ref)
    cos = get_metric("output_cosine").per_sample(onnx_out, ref)
    metric = get_metric(src.metric)
    agreement = float(metric.per_sample(onnx_out, ref).mean())
    parity = {"cosine": float(cos.min()), "max_abs": sim["max_abs"], "agreement": agreement,
              "agreement_metric": metric.name, "mean_cosine": float(cos.mean()), "data": ds.identity,
              "reference": "torch fp32 (transformers)"}
    if cos.min() < MIN_COSINE or agreement < MIN_AGREEMENT:
        raise ExportError(f"exported ONNX disagrees with torch: {metric.name} {agreement:.4f}, "
                          f"min per-sentence cosine {cos.min():.6f}",
                          hint="the export is not faithful; try another opset or report the architecture")
    return {"outputs": {src.outputs[0]: parity}, "n": len(ds)}
