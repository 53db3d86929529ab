"""Export of a Hugging Face source: optimum-onnx with dynamic axes, the sentence-transformers pooling added
to the graph, and our parity check on the task metric; the checked export is cached by content key."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

from edgecompile.data import TensorSpec
from edgecompile.errors import ExportError, ModelLoadError

OPSET = 18
# Parity of the FP32 export against torch, on the task: every sentence embedding this close, and
# the nearest neighbours (retrieval) / top-1 classes all but this fraction the same.
MIN_COSINE = 0.9999
MIN_AGREEMENT = 0.99
EMBEDDING_OUTPUT = "sentence_embedding"

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


def _export_cached(src) -> None:
    from edgecompile.cache import content_key, subdir
    from edgecompile.runtime.machine import toolchain_versions

    key = content_key("hf-export/v1", src.fingerprint, src.task, OPSET, toolchain_versions(), _code_key())
    entry = subdir("hf-export") / key[:32]
    meta_file = entry / "meta.json"
    if not meta_file.is_file():
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            inputs, parity = _export(src, tmp)
            (tmp / "meta.json").write_text(json.dumps({"inputs": inputs, "parity": parity, "adapter": src.adapter}))
            try:
                tmp.rename(entry)
            except OSError:          # another process finished first: keep its entry
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_file.read_text())
    src.inputs = [TensorSpec(n, ("batch", "sequence"), "int64") for n in meta["inputs"]]
    src.parity = meta["parity"]
    if src.lora is not None:             # merge counts from the export, path and hash of this adapter
        src.adapter = {**(meta.get("adapter") or {}), **src.lora.record()}
    src.path = entry / "model.onnx"


def _code_key() -> str:
    """The code the cached export depends on: this module, the corpora, tokenization/pooling and metrics."""
    import edgecompile

    root = Path(edgecompile.__file__).resolve().parent
    h = hashlib.sha256()
    for rel in (
        "compiler/hf.py",
        "compiler/hf_export.py",
        "compiler/lora.py",
        "compiler/textdata.py",
        "runtime/text.py",
        "verify/metrics.py",
        "verify/textmetrics.py",
    ):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()


# the weights of a save_pretrained directory, whole or sharded (an index naming the shards)
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
TORCH_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def has_classification_head(config: dict) -> bool:
    """config.json names a sequence-classification architecture (BertForSequenceClassification, ...)."""
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def uses_safetensors(directory: Path) -> bool:
    return any((directory / n).is_file() for n in SAFETENSORS)


def is_weight_file(name: str) -> bool:
    """model.safetensors / pytorch_model.bin, their shards (model-00001-of-00002.safetensors) and indexes."""
    return re.fullmatch(r"(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin)(\.index\.json)?",
                        name) is not None


# the files a slow (Python) tokenizer is made from: a directory without tokenizer.json is converted once
SLOW_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
                        "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "added_tokens.json")


def tokenizer_file(directory: Path) -> Path:
    """The directory's tokenizer.json, or one converted from its slow tokenizer's files by transformers
    (cached by their content); raises a one-line ModelLoadError when there is neither."""
    directory = Path(directory)
    own = directory / "tokenizer.json"
    if own.is_file():
        return own
    files = [directory / n for n in SLOW_TOKENIZER_FILES if (directory / n).is_file()]
    hint = "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes one"
    if not any(f.name not in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json") for f in files):
        raise ModelLoadError(f"{directory}: no tokenizer.json, nor a vocabulary to make one from", hint=hint)
    from edgecompile.cache import content_key, subdir

    key = content_key("hf-tokenizer/v1", *[(f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files])
    out = subdir("hf-tokenizer") / key[:32] / "tokenizer.json"
    if out.is_file():
        return out
    _quiet()
    try:
        from transformers import AutoTokenizer

        with warnings.catch_warnings(), redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(directory), use_fast=True, local_files_only=True)
        if not tok.is_fast:
            raise ValueError("transformers has no fast version of this tokenizer")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tok.backend_tokenizer.save(str(tmp))
        tmp.replace(out)
    except Exception as exc:  # noqa: BLE001  (conversion errors come from many libraries)
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"{directory}: no tokenizer.json, and converting its slow tokenizer failed ({msg})",
                             hint=hint) from None
    return out


def _load_torch_model(src):
    _quiet()
    try:
        from transformers import AutoModel, AutoModelForSequenceClassification
    except ImportError:
        raise ModelLoadError("Hugging Face sources need transformers and optimum-onnx",
                             hint="pip install 'edgecompile[hf]'") from None
    cls = AutoModel if src.task == "feature-extraction" else AutoModelForSequenceClassification
    safetensors = uses_safetensors(src.directory)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(src.directory), local_files_only=True, use_safetensors=safetensors,
                                        weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"{src.directory}: loading the model failed: {msg}",
                             hint="check the directory is a complete save_pretrained output") from None
    if src.lora is not None:              # the parity check then compares the export with the merged model
        from edgecompile.compiler.lora import merge_lora

        src.adapter = {**src.lora.record(), **merge_lora(model, src.lora)}
    return model.eval()


def _export(src, out: Path) -> tuple[list[str], dict]:
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
        raise ExportError(
            f"optimum ONNX export ({src.task}) failed: {msg}",
            hint="check that optimum-onnx supports this architecture and task; rerun with --debug",
        ) from exc
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
    if pooling in ("mean", "mean_sqrt_len", "weightedmean", "lasttoken"):
        # a weighted sum over the sequence: weights = mask (mean), mask x position 1..S (weightedmean) or the
        # one-hot of the last real token (lasttoken: cumsum(mask) reaches the count there, x mask)
        weights = "pool_maskf"
        if pooling == "weightedmean":
            init.append(numpy_helper.from_array(np.array(1, np.int64), "pool_one_i"))
            nodes += [helper.make_node("Shape", ["last_hidden_state"], ["pool_shape"]),
                      helper.make_node("Gather", ["pool_shape", "pool_one_i"], ["pool_len"], axis=0),
                      helper.make_node("Add", ["pool_len", "pool_one_i"], ["pool_end"]),
                      helper.make_node("Range", ["pool_one_i", "pool_end", "pool_one_i"], ["pool_pos_i"]),
                      helper.make_node("Cast", ["pool_pos_i"], ["pool_pos"], to=TensorProto.FLOAT),
                      helper.make_node("Unsqueeze", ["pool_pos", "pool_axis1"], ["pool_pos2"]),
                      helper.make_node("Mul", ["pool_maskf", "pool_pos2"], ["pool_w"])]
            weights = "pool_w"
        elif pooling == "lasttoken":
            init.append(numpy_helper.from_array(np.array(1, np.int64), "pool_one_i"))
            nodes += [helper.make_node("CumSum", ["pool_maskf", "pool_one_i"], ["pool_cum"]),
                      helper.make_node("ReduceSum", ["pool_maskf", "pool_axis1"], ["pool_n"], keepdims=1),
                      helper.make_node("Equal", ["pool_cum", "pool_n"], ["pool_at_end"]),
                      helper.make_node("Cast", ["pool_at_end"], ["pool_at_endf"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", ["pool_at_endf", "pool_maskf"], ["pool_w"])]
            weights = "pool_w"
        init.append(numpy_helper.from_array(np.array(1e-9, np.float32), "pool_eps"))
        nodes += [helper.make_node("Mul", ["last_hidden_state", weights], ["pool_masked"]),
                  helper.make_node("ReduceSum", ["pool_masked", "pool_axis1"], ["pool_sum"], keepdims=0),
                  helper.make_node("ReduceSum", [weights, "pool_axis1"], ["pool_count0"], keepdims=0),
                  helper.make_node("Max", ["pool_count0", "pool_eps"], ["pool_count"])]
        if pooling == "mean_sqrt_len":
            nodes += [helper.make_node("Sqrt", ["pool_count"], ["pool_root"]),
                      helper.make_node("Div", ["pool_sum", "pool_root"], ["pool_out"])]
        else:
            nodes.append(helper.make_node("Div", ["pool_sum", "pool_count"], ["pool_out"]))
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
        raise ExportError(f"unsupported pooling {pooling!r}", hint="mean, cls, max, mean_sqrt_len, weightedmean "
                          "or lasttoken")
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


def check_parity(src, model, onnx_path: Path) -> dict:
    import torch

    from edgecompile.verify.metrics import get_metric, raw_similarity
    from edgecompile.runtime.text import pool
    from edgecompile.targets.ort.build import ort_outputs

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
