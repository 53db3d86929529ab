"""TinyBERT-style distillation of a Hugging Face encoder into a shallower student (`edgecompile distill
--teacher DIR --student-layers N`).

* Student initialisation ("layer dropping"): the teacher's embeddings, pooler and N of its layers, picked
  by the uniform TinyBERT map g(k) = round(k * L / N) (1-based): for 6 -> 3 layers, teacher layers 2, 4, 6.
  The map ends on the teacher's last layer, so the student's top layer is the one whose output the
  sentence-transformers pooling was trained on, and each student layer imitates the teacher layer it
  was copied from (the hidden-state targets equal the initialisation's own layers).
* Losses on unlabelled text, each divided by its value at step 0 so that the three weigh alike:
  hidden states (MSE of student layer k's output against teacher layer g(k)'s, and embeddings against
  embeddings, over real tokens), attention maps (MSE of the attention probabilities of student layer k
  against teacher layer g(k), over real query/key pairs) and outputs (1 - cosine of the pooled sentence
  embeddings; for a sequence-classification teacher, whose head the student keeps, KL divergence of the
  class distributions, or the logits' MSE for sigmoid and regression heads).
* The student is saved as a Hugging Face directory (`config.json` with the new `num_hidden_layers`,
  `model.safetensors`, the teacher's tokenizer and sentence-transformers files, `distillation.json`)
  that `edgecompile build` takes like any other.
"""
from __future__ import annotations

import copy
import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np

from edgecompile.errors import ConfigError, DataError, ModelLoadError

# files of the teacher directory that are not copied into the student (config, docs, exports; the weights,
# whole or sharded, are hf_export.is_weight_file's)
_NOT_COPIED = {"config.json", "README.md", "distillation.json", "onnx", "openvino", "model.onnx", ".git",
               "__pycache__"}
_LAYER_KEY = re.compile(r"^(.*\blayers?)\.(\d+)\.(.+)$")


def layer_map(n_teacher: int, n_student: int) -> list[int]:
    """0-based teacher layer for each student layer (uniform map, ending on the teacher's last layer)."""
    check_layers(n_teacher, n_student)
    return [int(math.floor((k + 1) * n_teacher / n_student + 0.5)) - 1 for k in range(n_student)]


def check_layers(n_teacher: int, n_student: int) -> None:
    if not 1 <= n_student < n_teacher:
        raise ConfigError(f"--student-layers {n_student}: must be at least 1 and fewer than the teacher's "
                          f"{n_teacher} layers", hint=f"pick 1..{n_teacher - 1}")


def teacher_directory(spec: str) -> tuple[Path, str]:
    """(Hugging Face directory, name) of a teacher given as a directory or a models/<name> package."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "__init__.py").is_file():
        from edgecompile.compiler.decoder import is_decoder_dir

        if is_decoder_dir(path):
            raise ConfigError(f"teacher {spec!r} is a causal LM", hint="--student-layers distills encoders "
                              "(feature-extraction models such as models/minilm)")
        return path, path.resolve().name
    from edgecompile.source import resolve_source

    src = resolve_source(spec)
    if src.kind != "hf" or getattr(src, "task", None) != "feature-extraction":
        raise ConfigError(f"teacher {spec!r} is not a Hugging Face sentence encoder",
                          hint="--student-layers needs a Hugging Face encoder directory or a package such as "
                               "models/minilm; for torch packages use --student")
    return Path(src.directory), src.name


def read_texts(path: str | Path | None) -> tuple[list[str], str]:
    """Training texts: one per non-empty line of a UTF-8 file, else the Lee background sentences that
    the evaluation split does not use (textdata: sentences 256 on)."""
    if path is None:
        from edgecompile.compiler.textdata import lee_sentences

        sents = list(lee_sentences()[256:])
        return sents, f"gensim lee_background.cor sentences 256..{256 + len(sents)} (eval split held out)"
    p = Path(path)
    try:
        lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the text file ({exc.__class__.__name__})",
                        hint="--data takes a UTF-8 text file with one text per line") from None
    texts = [s for s in lines if s]
    if len(texts) < 2:
        raise DataError(f"{path}: {len(texts)} non-empty line(s); distillation needs at least 2 texts",
                        hint="one text per line (unlabelled sentences or paragraphs)")
    return texts, f"{p.name} ({len(texts)} lines)"


def is_sequence_classifier(directory: Path) -> bool:
    from edgecompile.compiler.hf_export import has_classification_head

    try:
        config = json.loads((Path(directory) / "config.json").read_text())
        return isinstance(config, dict) and has_classification_head(config)
    except (OSError, ValueError):
        return False


def load_encoder(directory: Path, classifier: bool = False):
    """The Hugging Face encoder (with its classification head when `classifier`) with eager attention (so
    that attention probabilities are returned)."""
    import io
    import warnings
    from contextlib import redirect_stderr

    from edgecompile.compiler.hf_export import _quiet, uses_safetensors

    _quiet()
    from transformers import AutoModel, AutoModelForSequenceClassification

    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            cls = AutoModelForSequenceClassification if classifier else AutoModel
            model = cls.from_pretrained(str(directory), local_files_only=True, attn_implementation="eager",
                                        use_safetensors=uses_safetensors(directory), weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"{directory}: loading the teacher failed: {msg}",
                             hint="the teacher must be a complete save_pretrained directory") from None
    return model.eval()


def teacher_layers(directory: Path) -> int:
    """The encoder's layer count, under whichever name its config uses (DistilBERT: n_layers)."""
    cfg = json.loads((directory / "config.json").read_text())
    if "num_hidden_layers" in cfg:
        return int(cfg["num_hidden_layers"])
    from transformers import AutoConfig

    alias = getattr(AutoConfig.for_model(cfg["model_type"]), "attribute_map", {}).get("num_hidden_layers")
    return int(cfg[alias])


def init_student(teacher, layers: list[int]):
    """A copy of `teacher` keeping only `layers` (0-based), with the teacher's weights."""
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(layers)
    student = type(teacher)(cfg)
    state = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER_KEY.match(key)
        if m is None:
            state[key] = value.clone()
        elif int(m.group(2)) in layers:
            state[f"{m.group(1)}.{layers.index(int(m.group(2)))}.{m.group(3)}"] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"cannot initialise a {len(layers)}-layer {cfg.model_type} student from the teacher's "
                             f"layers ({len(missing)} missing, {len(unexpected)} unexpected weights)",
                             hint="layer dropping supports encoders whose layers are named '...layer.N...'")
    return student


def _pool(hidden, mask, pooling: str):
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "max":
        out = (hidden + (1.0 - m) * -1e9).max(1).values
    else:
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(out, dim=-1)


def _terms(t_out, s_out, mask, layers: list[int], pooling: str, head: str | None = None):
    """(hidden-state MSE, attention-probability MSE, output term): 1 - mean cosine of the pooled embeddings,
    or for a classification `head` (its scoring: softmax | sigmoid | none) KL(teacher || student) of the
    class distributions (softmax) or the MSE of the logits."""
    m = mask.to(t_out.hidden_states[0].dtype)
    tok = m.unsqueeze(-1)
    width = t_out.hidden_states[0].shape[-1]
    pairs = [(0, 0)] + [(k + 1, t + 1) for k, t in enumerate(layers)]
    hidden = sum(((s_out.hidden_states[s] - t_out.hidden_states[t]) ** 2 * tok).sum() for s, t in pairs)
    hidden = hidden / (len(pairs) * m.sum() * width)
    pair_mask = m[:, None, :, None] * m[:, None, None, :]
    heads = t_out.attentions[0].shape[1]
    attn = sum((((s_out.attentions[k] - t_out.attentions[t]) ** 2) * pair_mask).sum() for k, t in enumerate(layers))
    attn = attn / (len(layers) * heads * pair_mask.sum())
    if head == "softmax":
        import torch

        log_t = torch.log_softmax(t_out.logits, -1)
        return hidden, attn, (log_t.exp() * (log_t - torch.log_softmax(s_out.logits, -1))).sum(-1).mean()
    if head is not None:
        return hidden, attn, ((s_out.logits - t_out.logits) ** 2).mean()
    cos = (_pool(s_out.hidden_states[-1], mask, pooling) * _pool(t_out.hidden_states[-1], mask, pooling)).sum(-1)
    return hidden, attn, 1.0 - cos.mean()


OUTPUT_TERMS = {None: ("one_minus_cos", "1-cos", "1 - pooled cosine"), "softmax": ("output_kl", "KL", "class KL"),
                "sigmoid": ("output_mse", "logit MSE", "logit MSE"), "none": ("output_mse", "MSE", "output MSE")}


def distill_student(teacher_dir: Path, n_layers: int, out_dir: Path, *, steps: int = 300,
                    texts: list[str] | None = None, data_identity: str = "", batch_size: int = 32, lr: float = 1e-4,
                    max_length: int = 128, seed: int = 0, progress=None, teacher_name: str | None = None) -> dict:
    """Initialise, distill and save the student; returns the record written to `distillation.json`."""
    import torch

    from edgecompile.compiler.hf import _pooling, load_tokenizer, scoring_rule, tokenize
    from edgecompile.compiler.hf_export import tokenizer_file

    if steps < 1:
        raise ConfigError(f"--steps {steps}: must be >= 1", hint="e.g. --steps 300")
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    _check_output(out_dir, teacher_dir)
    if texts is None:
        texts, data_identity = read_texts(None)
    classifier = is_sequence_classifier(teacher_dir)
    teacher = load_encoder(teacher_dir, classifier)
    head = scoring_rule(teacher.config.to_dict(), int(teacher.config.num_labels)) if classifier else None
    out_key, out_label, out_what = OUTPUT_TERMS[head]
    n_teacher = int(teacher.config.num_hidden_layers)
    layers = layer_map(n_teacher, n_layers)
    pooling, _, _ = _pooling(teacher_dir)
    torch.manual_seed(seed)
    student = init_student(teacher, layers).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    tok = load_tokenizer(tokenizer_file(teacher_dir), max_length)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    accepted = set(teacher.forward.__code__.co_varnames)
    names = [n for n in names if n in accepted]
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, max(0.0, (steps - i) / max(1, steps - warm))))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    scale = None
    history = []
    every = max(1, steps // 10)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += list(rng.permutation(len(texts)))
        idx, order = order[:batch_size], order[batch_size:]
        feeds, _ = tokenize(tok, [texts[i] for i in idx], names, max_length)
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
        s_out = student(**inputs, output_hidden_states=True, output_attentions=True)
        terms = _terms(t_out, s_out, inputs["attention_mask"], layers, pooling, head)
        if scale is None:
            scale = [1.0 / max(float(t.detach()), 1e-12) for t in terms]
        loss = sum(w * t for w, t in zip(scale, terms))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        vals = [float(t.detach()) for t in terms]
        history.append(vals)
        if progress is not None and (step % every == 0 or step == 1 or step == steps):
            progress.info(f"  distill step {step}/{steps}: loss {float(loss.detach()):.4f} (hidden {vals[0]:.5f}, "
                          f"attention {vals[1]:.6f}, {out_label} {vals[2]:.5f})  {time.perf_counter() - t0:.0f} s")
    seconds = time.perf_counter() - t0
    n_params = lambda m: int(sum(p.numel() for p in m.parameters()))  # noqa: E731
    first, last = history[0], [float(np.mean([h[i] for h in history[-min(10, len(history)):]])) for i in range(3)]
    record = {
        "teacher": teacher_name or teacher_dir.resolve().name, "teacher_layers": n_teacher,
        "student_layers": n_layers, "layer_map": {f"student {k + 1}": f"teacher {t + 1}" for k, t in enumerate(layers)},
        "init": "layer dropping: teacher embeddings, pooler, the mapped layers" + (" and the head" if head else ""),
        "losses": f"hidden-state MSE + attention-probability MSE + {out_what}, each / its step-0 value",
        "head": head,
        "steps": steps, "batch_size": batch_size, "lr": lr, "max_length": max_length, "seed": seed,
        "data": data_identity or f"{len(texts)} texts", "texts": len(texts), "pooling": pooling,
        "loss_first": dict(zip(("hidden", "attention", out_key), first)),
        "loss_last10": dict(zip(("hidden", "attention", out_key), last)),
        "params": {"teacher": n_params(teacher), "student": n_params(student)}, "train_seconds": round(seconds, 1),
    }
    _save(student.eval(), teacher_dir, out_dir, record)
    return record


def _check_output(out_dir: Path, teacher_dir: Path) -> None:
    if out_dir.resolve() == teacher_dir.resolve():
        raise ConfigError("the student directory is the teacher's", hint="pass another --student DIR")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / "distillation.json").is_file())):
        raise ConfigError(f"{out_dir} exists and is not a distilled student directory",
                          hint="pass a new or empty --student DIR (a previous student there is replaced)")


def _save(student, teacher_dir: Path, out_dir: Path, record: dict) -> None:
    """Write the Hugging Face directory next to `out_dir` and swap it into place."""
    from edgecompile.compiler.hf_export import is_weight_file

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(str(tmp), safe_serialization=True)
    for p in sorted(teacher_dir.iterdir()):
        if p.name in _NOT_COPIED or p.name.startswith(".") or is_weight_file(p.name):
            continue
        (shutil.copytree if p.is_dir() else shutil.copyfile)(p, tmp / p.name)
    (tmp / "distillation.json").write_text(json.dumps(record, indent=2) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


# -- `edgecompile distill --student-layers N`: distill, build the student, compare with the teacher ---------------

def distill_and_build(teacher: str, n_layers: int, *, student_dir: str | Path | None = None,
                      output: str | Path | None = None, steps: int = 300, data: str | Path | None = None,
                      target: str | None = None, backend: str | None = None, precision: str | None = None,
                      config=None, progress=None):
    """Distill, save the student directory, build its bundle and the teacher's the same way, compare them
    (edgecompile.verify.textcompare) and add the comparison to the student bundle's report.
    Returns (student bundle, report["distillation"])."""
    import tempfile

    from edgecompile.compiler.pipeline import build
    from edgecompile.progress import Progress
    from edgecompile.verify.textcompare import compare_text_bundles, comparison_rows

    progress = progress or Progress(quiet=True)
    tdir, tname = teacher_directory(teacher)
    try:
        n_teacher = teacher_layers(tdir)
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{tdir}/config.json has no num_hidden_layers",
                             hint="--student-layers distills transformer encoders (BERT-like)") from None
    check_layers(n_teacher, n_layers)
    if steps < 1:
        raise ConfigError(f"--steps {steps}: must be >= 1", hint="e.g. --steps 300")
    texts, identity = read_texts(data)
    student_dir = Path(student_dir) if student_dir else (
        Path(f"{output}-student") if output else Path(f"{tname}-{n_layers}L"))
    with progress.step("distill", f"{tname} {n_teacher} -> {n_layers} layers, {steps} steps on {identity}"):
        record = distill_student(tdir, n_layers, student_dir, steps=steps, texts=texts, data_identity=identity,
                                 progress=progress, teacher_name=tname)
    progress.info(f"student written to {student_dir}")
    bundle = build(student_dir, target, output=output, backend=backend, precision=precision, config=config,
                   progress=progress)
    with tempfile.TemporaryDirectory(prefix="edgecompile-teacher-") as tmp:
        progress.info(f"teacher bundle for the comparison (backend {bundle.manifest['backend']}, same options)")
        t_bundle = build(teacher, target, output=Path(tmp) / "teacher", backend=bundle.manifest["backend"],
                         precision=precision, config=config, progress=progress)
        with progress.step("compare", "teacher vs student: size, interleaved encode latency, metrics"):
            cmp = compare_text_bundles(t_bundle.path, bundle.path)
    metric = "label agreement with teacher" if cmp.get("task") == "text-classification" else "mean cosine to teacher"
    section = {"kind": "hf-layer-distillation", "teacher": tname, "metric": metric,
               "rows": comparison_rows(cmp, record["params"]), "comparison": cmp, "training": record,
               "student_dir": str(student_dir)}
    _add_to_report(bundle.path, section, config)
    return bundle, section


def _add_to_report(bundle_dir: Path, section: dict, config) -> None:
    """report.json/.md/.html are derived files (not hashed): re-render them with the distillation section."""
    from edgecompile.compiler.config import Config
    from edgecompile.compiler.writer import _write_text, write_json
    from edgecompile.report import load_report, render_md

    cfg = Config.from_file(config) if isinstance(config, (str, Path)) else (config or Config())
    formats = cfg.report.formats
    bundle_dir = Path(bundle_dir)
    report = load_report(bundle_dir)
    report["distillation"] = section
    write_json(bundle_dir / "report.json", report)
    if "md" in formats:
        _write_text(bundle_dir / "report.md", render_md(report, bundle_dir))
    if "html" in formats:
        from edgecompile.report.html import render_html

        _write_text(bundle_dir / "report.html", render_html(report, bundle_dir))
