"""Decoder LMs: Hugging Face causal-LM directories and `.gguf` files -> generation bundles.

Stages: load (transformers, FP32; a `.gguf` is dequantized by transformers' GGUF reader) ->
export one graph with past key/values (optimum-onnx `text-generation-with-past`: `input_ids`,
`attention_mask`, `position_ids`, `past_key_values.N.key/value` -> `logits`, `present.N.key/value`)
-> parity (greedy tokens of ONNX Runtime vs transformers) -> weight-only quantization
(`int4`/`int8`: ORT MatMulNBits + GatherBlockQuantized for the embedding; `int8` also tries
dynamic INT8 MatMulInteger and ships the faster one within the bound) with an accuracy-aware
fallback (keep `lm_head` in float, then fp32) -> bundle (model.onnx, tokenizer.json, manifest
front-end "generation") -> report (perplexity on held-apart text, greedy agreement, TTFT, decode
tokens/s, per-token p50/p99, peak memory, size), measured through the runtime.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompile.errors import ExportError, ModelLoadError

DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")
PRECISIONS = ("fp32", "int8", "int4")
EXPORT_VERSION = "decoder-export/v2"      # bump when export_onnx / fold_weight_transposes change
DEFAULT_BLOCK_SIZE = 32          # = the GGUF Q4 block: re-quantizing a Q4 model to 4 bits loses ~nothing
DEFAULT_BOUND_PCT = 1.0          # relative perplexity increase, % (the contract's default bound)
AGREEMENT_TOKENS = 32
TTFT_LENGTHS = (16, 64, 256)

# Greedy-agreement prompts (fixed; plain text, no chat template).
PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
    "The three primary colors are", "To make a cup of tea, first", "import numpy as np\n",
    "The theory of relativity states that", "My favourite programming language is",
    "In 1969, the first humans", "The recipe calls for two cups of",
    "Water boils at a temperature of", "The best way to learn a new language is",
    "SELECT name FROM users WHERE", "The quick brown fox", "Photosynthesis is the process by which",
    "Here is a list of prime numbers:", "The meeting was postponed because",
    "A neural network is", "Dear hiring manager,", "The weather forecast for tomorrow says",
    "class Stack:\n    def __init__(self):", "The largest planet in the solar system is",
    "Mount Everest is located in", "The stock market fell sharply after",
]


@dataclass
class DecoderSource:
    """A decoder LM to build: an HF directory (config.json with a *ForCausalLM architecture) or a .gguf file."""

    name: str
    path: Path                       # the directory (HF) or the .gguf file
    fingerprint: str
    gguf_file: str | None = None
    kind: str = "decoder"
    metric: str = "perplexity"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)
    class_labels: list | None = None
    default_calibration: str | None = None
    default_evaluation: str | None = None
    splits: tuple = ()
    train_split: str | None = None
    frontend: dict | None = None     # the generation front-end's record is written by the decoder build itself
    parity: dict | None = None       # checked on greedy tokens by the decoder build, not by the pipeline

    def _where(self) -> tuple[str, dict]:
        if self.gguf_file:
            return str(self.path.parent), {"gguf_file": self.gguf_file}
        return str(self.path), {}

    def load(self, cache: bool = True):
        """(FP32 torch model in eval mode, transformers tokenizer). A .gguf is dequantized once and
        kept as an HF directory (safetensors) in the cache, keyed by the file's sha256."""
        where, kw = self._where()
        saved = None
        if self.gguf_file and cache:
            from edgecompile.cache import cache_dir

            saved = cache_dir() / "decoder-gguf" / self.fingerprint[:32]
            if (saved / "done").is_file():
                where, kw = str(saved), {}
        with quiet_libraries():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(where, **kw)
                model = AutoModelForCausalLM.from_pretrained(where, torch_dtype="float32", **kw).eval()
            except ImportError as exc:
                raise ModelLoadError(f"{self.path}: loading needs a package that is not installed: {exc}",
                                     hint="pip install 'edgecompile[hf]' (and gguf for .gguf files)") from None
            except Exception as exc:  # noqa: BLE001  (any loader failure -> one-line error)
                raise ModelLoadError(f"{self.path}: transformers cannot load this model: "
                                     f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                     hint="pass a causal-LM directory (config.json, weights, tokenizer) or a .gguf "
                                          "file transformers can read") from None
            if saved is not None and kw:
                import shutil

                tmp = saved.with_name(saved.name + f".tmp-{os.getpid()}")
                try:
                    model.save_pretrained(tmp)
                    tok.save_pretrained(tmp)
                    (tmp / "done").write_text("ok")
                    shutil.rmtree(saved, ignore_errors=True)
                    os.rename(tmp, saved)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)      # a cache never fails a build
        return model, tok


def is_decoder_dir(path: Path) -> bool:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    archs = cfg.get("architectures") or []
    return any(isinstance(a, str) and a.endswith(DECODER_SUFFIXES) for a in archs)


def decoder_source(path: str | Path) -> DecoderSource:
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    if path.suffix == ".gguf":
        return DecoderSource(name=path.stem, path=path, fingerprint=h.hexdigest(), gguf_file=path.name)
    return DecoderSource(name=path.name, path=path, fingerprint=h.hexdigest())


@contextlib.contextmanager
def quiet_libraries():
    """transformers/optimum/torch talk through loggers and warnings; a build shows its own progress."""
    try:
        from transformers.utils import logging as hf_logging

        old = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        hf_logging = None
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(prev)
        if hf_logging is not None:
            hf_logging.set_verbosity(old)
            if bars:
                hf_logging.enable_progress_bar()


# -- export --------------------------------------------------------------------------------------------------

def export_onnx(model, out_dir: Path) -> Path:
    """optimum-onnx text-generation-with-past -> out_dir/model.onnx (one graph, with past key/values)."""
    with quiet_libraries():
        from optimum.exporters.onnx import onnx_export_from_model

        try:
            import contextlib as cl
            import io

            with cl.redirect_stdout(io.StringIO()):
                onnx_export_from_model(model, str(out_dir), task="text-generation-with-past", do_validation=False)
        except Exception as exc:  # noqa: BLE001  (any exporter failure -> one-line error)
            raise ExportError(f"exporting the decoder to ONNX failed: {exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}",
                              hint="optimum-onnx supports llama, gpt2, qwen2, mistral, phi... architectures") from None
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise ExportError("optimum produced no model.onnx", hint="check the model's architecture is supported")
    return path


def fold_weight_transposes(model_path: Path) -> int:
    """Replace Transpose(initializer) by the transposed initializer (a tied lm_head is exported as
    MatMul(x, Transpose(embedding)) for small models): no transpose per call, and the quantizer
    sees a constant MatMul weight. Returns the number of folded nodes."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model_path))
    inits = {i.name: i for i in proto.graph.initializer}
    folded = [n for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    for n in folded:
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        arr = np.ascontiguousarray(np.transpose(numpy_helper.to_array(inits[n.input[0]]), perm))
        proto.graph.initializer.append(numpy_helper.from_array(arr, n.output[0]))
        proto.graph.node.remove(n)
    if folded:
        onnx.save(proto, str(model_path))
    return len(folded)


def kv_layout(model_path: Path) -> dict:
    """Names and shapes of the graph's cache inputs/outputs (from the graph itself)."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    names = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    layers = []
    i = 0
    while f"past_key_values.{i}.key" in names:
        layers.append(
            [f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value"]
        )
        i += 1
    if not layers or "logits" not in outs or any(n not in outs for l in layers for n in l[2:]):
        raise ExportError("the exported graph lacks past_key_values/present/logits", hint="report this model")
    first = next(x for x in proto.graph.input if x.name == layers[0][0])
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim]
    return {"kv": layers, "num_kv_heads": dims[1], "head_dim": dims[3], "position_ids": "position_ids" in names}


# -- quantization --------------------------------------------------------------------------------------------

def quantize(src: Path, dst: Path, scheme: str, bits: int, block_size: int, exclude: list[str],
             algorithm: str = "rtn", split: bool = True, **float_zp) -> dict:
    """Weight-only (MatMulNBits/GatherBlockQuantized, asymmetric, blocks along K) or dynamic INT8.

    algorithm "minmax-float-zp": GGUF Q4_1's scale-and-minimum form (exact for a model that was already
    4-bit), run on ORT's integer-zero-point kernels by a zero-point correction (`split`; see
    decoder_int4.py, `float_zp` its options). "rtn": ORT's integer zero points (every block rounded again)."""
    import onnx

    with quiet_libraries():
        if scheme == "weight-only" and algorithm == "minmax-float-zp":
            from edgecompile.compiler.decoder_int4 import quantize_float_zp

            return quantize_float_zp(src, dst, bits, block_size, exclude, split=split, **float_zp)
        if scheme == "weight-only":
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                MatMulNBitsQuantizer,
            )

            q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=False,
                                     accuracy_level=4, nodes_to_exclude=exclude,
                                     op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",),
                                     quant_axes=(("MatMul", 0), ("Gather", 1)))
            q.process()
            q.model.save_model_to_file(str(dst), use_external_data_format=False)
            return {
                "scheme": "weight-only",
                "op": "MatMulNBits",
                "algorithm": "rtn",
                "bits": bits,
                "block_size": block_size,
                "symmetric": False,
                "accuracy_level": 4,
                "embedding": "GatherBlockQuantized" if bits == 4 else "float (ORT quantizes Gather to 4 bits only)",
                "float_nodes": exclude,
            }
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=exclude, per_channel=True)
        return {"scheme": "dynamic", "op": "MatMulInteger", "bits": 8, "per_channel": True, "float_nodes": exclude}


# -- evaluation texts ------------------------------------------------------------------------------------------

EVAL_MODULES = ("json", "argparse", "pathlib", "subprocess", "collections", "functools", "itertools", "logging",
                "string", "textwrap", "datetime", "heapq", "shutil", "tempfile", "zipfile", "csv")


def eval_text() -> str:
    """Real English held apart from everything the build uses (weight-only quantization has no
    calibration text): docstrings of Python standard-library modules, in a fixed order."""
    import importlib
    import inspect

    parts = []
    for name in EVAL_MODULES:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(vars(mod)) if not a.startswith("_")]:
            doc = inspect.getdoc(obj) if (obj is mod or getattr(obj, "__module__", None) == name) else None
            if doc and len(doc) > 200:
                parts.append(doc)
    return "\n\n".join(dict.fromkeys(parts))


def eval_windows(tokenize, n_windows: int, window: int) -> list[list[int]]:
    ids = tokenize(eval_text())
    windows = [ids[i * window:(i + 1) * window] for i in range(n_windows)]
    return [w for w in windows if len(w) == window]


def nll(logits: np.ndarray, ids) -> float:
    """Mean negative log-likelihood of ids[1:] given logits[:-1]."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x).sum(axis=-1))
    tgt = np.asarray(ids[1:])
    return float((lse - x[np.arange(len(tgt)), tgt]).mean())


def torch_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def torch_greedy(model, ids, n: int, eos_ids) -> list[int]:
    import torch

    with torch.no_grad(), quiet_libraries():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=list(eos_ids) or None,
                             pad_token_id=(list(eos_ids) or [0])[0])
    return out[0, len(ids):].tolist()


def prefix_agreement(a: list[int], b: list[int], n: int) -> float:
    """Fraction of the first n reference tokens matched before the first divergence."""
    k = 0
    for x, y in zip(a[:n], b[:n]):
        if x != y:
            break
        k += 1
    return k / max(1, min(n, len(b)))
