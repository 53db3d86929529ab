"""`edgecompile build`, `distill`, `targets` and `engine`: from a model to a bundle."""
from __future__ import annotations

import shutil

import click

from edgecompile.cli.common import Ctx, _load_config, _show_built, emit_json, verbosity_options


@click.command()
@click.argument("model", required=False)
@click.option("-t", "--target", help="Device profile (see `edgecompile targets`). Default: cpu.")
@click.option("-b", "--backend", help="Engine, where the target allows several (ort, openvino, tvm, or auto: "
              "measure them here, or on the --remote board, and ship the fastest within the accuracy bound; the cpu "
              "default; for an ARM target with no board: ort, said so).")
@click.option("-p", "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "int4", "auto"]),
              help="Numeric precision. Default: the target's (fp32 on CPUs). int4: weight-only (decoder LMs).")
@click.option("--block-size", "block_size", type=click.IntRange(min=16),
              help="Weight-only int4/int8 quantization block size ([passes.quantize] block_size). Default 32.")
@click.option("-o", "--output", type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("--data", type=click.Path(), help=".npz with arrays named after the inputs (+ optional labels); for text "
              "models also .txt/.jsonl/.tsv/.csv texts (+ optional labels).")
@click.option("-c", "--config", "config_path", type=click.Path(), help="TOML config (default: ./edgecompile.toml).")
@click.option("--task", type=click.Choice(["feature-extraction", "text-classification"]),
              help="Hugging Face model directories: what to export (default: from config.json).")
@click.option("--lora", type=click.Path(), metavar="ADAPTER_DIR",
              help="Hugging Face models: merge this PEFT LoRA adapter into the weights before export.")
@click.option("--strict", is_flag=True, default=None, help="Exit 3 when the requested precision cannot be met.")
@click.option("--force", is_flag=True, default=None, help="Ship the requested precision regardless.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads for measurement and the manifest.")
@click.option("--prune", "prune", type=float, metavar="RATIO",
              help="Structured pruning: remove this fraction of channels per layer, in [0, 1).")
@click.option("--finetune-epochs", type=click.IntRange(min=0), help="Fine-tuning epochs after pruning (default 3).")
@click.option("--distill/--no-distill", default=None,
              help="Fine-tune the pruned model with the unpruned one as teacher (default: on).")
@click.option("--tune", "tune_trials", type=click.IntRange(min=0), metavar="TRIALS",
              help="TVM: MetaSchedule trials (the tuning database is cached and reused).")
@click.option("--tune-timeout", type=click.FloatRange(min=0, min_open=True), metavar="MIN",
              help="TVM: stop tuning after MIN minutes.")
@click.option("--remote", metavar="HOST:PORT", help="A board behind this RPC tracker (loopback only): TVM tunes "
              "on it; --backend auto measures the candidates on it.")
@click.option("--key", "remote_key", metavar="KEY", help="TVM: the board's key on the --remote tracker, e.g. rpi5.")
@click.option("--quantize", "quantize", type=click.Choice(["static", "dynamic", "qat"]),
              help="INT8 mode for --precision int8 ([passes.quantize] mode). Default: dynamic for models whose "
                   "inputs are all integer token ids (transformers), else static.")
@click.option("--calibrate", type=click.Choice(["minmax", "entropy", "percentile", "search", "sample-mean"]),
              help="Calibration method for static INT8 ([passes.quantize] calibrate): search = per-tensor MSE "
                   "choice among min-max/percentile/entropy; sample-mean = mean of each sample's min/max. "
                   "Default: search.")
@click.option("--calib-samples", type=click.IntRange(min=1),
              help="Number of calibration samples ([passes.quantize] calib_samples). Default: 256.")
@click.option("--qat-epochs", "qat_epochs", type=click.IntRange(min=0),
              help="Training epochs for --quantize qat ([passes.quantize] qat_epochs). Default: 3.")
@click.option("--adaround", type=click.Choice(["auto", "on", "off"]),
              help="Learned weight rounding for static INT8 ([passes.quantize] adaround): auto = only when the "
                   "round-to-nearest result is over --max-accuracy-drop. Default: auto.")
@click.option("--max-accuracy-drop", "max_accuracy_drop", type=click.FloatRange(min=0.0),
              help="Accuracy bound for int8/auto ([passes.quantize] max_accuracy_drop): percentage points for "
                   "top-1/agreement, relative %% for error metrics. Layers are kept in float until it holds.")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Neither read nor write the build cache (stages are recomputed; trained example weights are kept).")
@click.option("--annotations", type=click.Path(),
              help="COCO-style gt.json for --data images of a .onnx detector (output [N, K, 6]); metric mAP.")
@click.option("--json", "json_mode", is_flag=True, help="Print report.json to stdout.")
@verbosity_options
@click.pass_obj
def build(
    obj: Ctx,
    model,
    target,
    backend,
    precision,
    block_size,
    output,
    data,
    config_path,
    task,
    lora,
    strict,
    force,
    threads,
    quantize,
    calibrate,
    calib_samples,
    qat_epochs,
    adaround,
    max_accuracy_drop,
    no_cache,
    prune,
    finetune_epochs,
    distill,
    tune_trials,
    tune_timeout,
    remote,
    remote_key,
    annotations,
    json_mode,
):
    """Build a bundle for MODEL (a models/<name> package, a built-in name, a .onnx file, a Hugging Face
    model directory, or a decoder LM: a Hugging Face causal-LM directory or a .gguf file).

    Flags override the config file (--config FILE, else ./edgecompile.toml), which overrides defaults.
    An identical rebuild is served from the content-addressed build cache (see `edgecompile cache`)."""
    from edgecompile.compiler.pipeline import build as run_build

    cfg = _load_config(config_path)
    cfg = cfg.with_overrides({"passes.quantize.mode": quantize, "passes.quantize.calibrate": calibrate,
                              "passes.quantize.block_size": block_size,
                              "passes.quantize.calib_samples": calib_samples,
                              "passes.quantize.qat_epochs": qat_epochs,
                              "passes.quantize.adaround": {"on": True, "off": False}.get(adaround, adaround),
                              "passes.quantize.max_accuracy_drop": max_accuracy_drop,
                              "tvm.remote": remote, "tvm.remote_key": remote_key, "data.annotations": annotations})
    progress = obj.progress(json_mode)
    bundle = run_build(model, target, output=output, backend=backend, precision=precision, data=data,
                       config=cfg, strict=strict, force=force, threads=threads, progress=progress,
                       cache=not no_cache, task=task, lora=lora, prune=prune, finetune_epochs=finetune_epochs,
                       distill=distill, tune_trials=tune_trials, tune_timeout=tune_timeout)
    _show_built(obj, bundle, json_mode)


@click.command()
@click.option("--teacher", required=True, help="Teacher model (a models/<name> package, a built-in name, or a "
              "Hugging Face encoder directory with --student-layers).")
@click.option("--student", help="Student model to train and build (same inputs, same classes); with "
              "--student-layers: the Hugging Face directory to write (default: OUTPUT-student, else TEACHER-NL).")
@click.option("--student-layers", "student_layers", type=int, metavar="N",
              help="Hugging Face encoders: a student of the teacher's N layers (TinyBERT-style distillation "
                   "of hidden states, attention maps and pooled outputs on unlabelled text).")
@click.option("--steps", type=int, help="--student-layers: training steps of 32 texts (default 300).")
@click.option("--data", type=click.Path(), help="--student-layers: a UTF-8 text file, one unlabelled text per line "
              "(default: gensim's Lee background sentences, the evaluation ones held out).")
@click.option("-t", "--target", help="Device profile for the student's bundle. Default: cpu.")
@click.option("-b", "--backend", help="Engine, where the target allows several.")
@click.option("-p", "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "auto"]),
              help="Numeric precision of the student's bundle.")
@click.option("-o", "--output", type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("-c", "--config", "config_path", type=click.Path(), help="TOML config (default: ./edgecompile.toml).")
@click.option("--epochs", type=click.IntRange(min=1), help="Distillation epochs (default 10).")
@click.option("--temperature", type=float, help="Softmax temperature of the logit KD term (default 4).")
@click.option("--alpha", type=float, help="Weight of the KD term; 1 - alpha weighs cross-entropy (default 0.7).")
@click.option("--feature", "features", multiple=True, metavar="S[:T]",
              help="Feature KD between student layer S and teacher layer T (repeatable).")
@click.option("--compare", is_flag=True, default=None, help="Also train the student without KD and report both.")
@click.option("--json", "json_mode", is_flag=True, help="Print report.json to stdout.")
@verbosity_options
@click.pass_obj
def distill(obj: Ctx, teacher, student, student_layers, steps, data, target, backend, precision, output, config_path,
            epochs, temperature, alpha, features, compare, json_mode):
    """Train STUDENT against TEACHER (knowledge distillation), then build the student's bundle.

    With --student-layers N (Hugging Face encoders): build an N-layer student from the teacher's layers,
    distill it on unlabelled text, save it as a Hugging Face directory, build it, and compare it with the
    teacher's bundle (size, speed, mean cosine, retrieval agreement, Spearman vs human judgements)."""
    from edgecompile.compiler.pipeline import build as run_build
    from edgecompile.errors import ConfigError

    cfg = _load_config(config_path)
    if student_layers is not None:
        _distill_layers(obj, cfg, teacher, student, student_layers, steps, data, target, backend, precision, output,
                        {"--epochs": epochs, "--temperature": temperature, "--alpha": alpha, "--feature": features,
                         "--compare": compare}, json_mode)
        return
    if student is None:
        raise ConfigError("distill needs --student MODEL or --student-layers N",
                          hint="--student for torch packages; --student-layers N for Hugging Face encoders")
    for flag, value in (("--steps", steps), ("--data", data)):
        if value is not None:
            raise ConfigError(f"{flag} applies with --student-layers", hint="torch students train for --epochs")
    cfg = cfg.with_overrides({"passes.distill.teacher": teacher, "passes.distill.epochs": epochs,
                              "passes.distill.temperature": temperature, "passes.distill.alpha": alpha,
                              "passes.distill.features": list(features) or None, "passes.distill.compare": compare})
    progress = obj.progress(json_mode)
    bundle = run_build(student, target, output=output, backend=backend, precision=precision, config=cfg,
                       progress=progress)
    rep = _show_built(obj, bundle, json_mode)
    if not json_mode and not obj.quiet:
        for r in (rep.get("distillation") or {}).get("steps", []):
            if r.get("metric") is not None:
                click.echo(f"  {r['stage']:<48} {r['metric_name']} {r['metric']:.4f}  params {r['params']}")


def _distill_layers(obj: Ctx, cfg, teacher, student, layers, steps, data, target, backend, precision, output,
                    torch_only: dict, json_mode):
    from edgecompile.compiler.hf_distill import distill_and_build
    from edgecompile.errors import ConfigError

    for flag, value in torch_only.items():
        if value:
            raise ConfigError(f"{flag} applies to torch students (--student), not with --student-layers",
                              hint="--student-layers takes --steps and --data")
    bundle, section = distill_and_build(teacher, layers, student_dir=student, output=output,
                                        steps=300 if steps is None else steps, data=data, target=target,
                                        backend=backend, precision=precision, config=cfg,
                                        progress=obj.progress(json_mode))
    _show_built(obj, bundle, json_mode)
    if not json_mode and not obj.quiet:
        click.echo(f"\nstudent directory: {section['student_dir']}  (layers "
                   f"{', '.join(section['training']['layer_map'].values())})")
        rows = section["rows"]
        widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
        click.echo("  ".join(k.ljust(w) for k, w in widths.items()))
        for r in rows:
            click.echo("  ".join(str(r[k]).ljust(w) for k, w in widths.items()))


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--rebuild", is_flag=True, help="Build again even if a cached engine exists.")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
@verbosity_options
@click.pass_obj
def engine(obj: Ctx, bundle_dir, rebuild, json_mode):
    """Prebuild the TensorRT engine of a jetson bundle on this device (cached in DIR/cache/tensorrt/)."""
    from edgecompile.targets.tensorrt.run import prebuild

    info = prebuild(bundle_dir, progress=obj.progress(json_mode), rebuild=rebuild)
    if json_mode:
        emit_json(info)
    elif not obj.quiet:
        click.echo(f"engine {info['origin']}: {info['engine']} ({info['bytes']} bytes, {info['tensorrt']})")


@click.command()
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
def targets(json_mode):
    """List every target (device profile), its backends, and whether each is available here."""
    from edgecompile.compiler import registry
    from edgecompile.targets.profiles import PROFILES

    rows = []
    cache: dict[str, tuple[bool, str]] = {}
    for profile in PROFILES.values():
        for backend in profile.backends:
            if backend not in cache:
                if backend == "auto":
                    cache[backend] = (True, "measures the available cpu backends; for another arch with no "
                                            "board: ort, said so")
                elif backend not in registry.target_names():
                    cache[backend] = (False, "not implemented in this version")
                else:
                    a = registry.get_target(backend).check_available()
                    cache[backend] = (a.ok, a.reason)
            ok, reason = cache[backend]
            portable = backend in registry.target_names() and registry.get_target(backend).portable
            if ok and profile.cross_compiler and not portable and not shutil.which(profile.cross_compiler):
                ok, reason = (
                    False,
                    f"{profile.cross_compiler} not found (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)",
                )
            rows.append({"target": profile.name, "aliases": list(profile.aliases), "description": profile.description,
                         "backend": backend, "default": backend == profile.default_backend,
                         "available": ok, "reason": reason})
    if json_mode:
        emit_json(rows)
        return
    w = max(len(r["target"]) for r in rows)
    for r in rows:
        name = r["target"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        click.echo(f"{name:<{w + 10}} {r['backend'] + ('*' if r['default'] else ''):<10} "
                   f"{'yes' if r['available'] else 'no ':<4} {r['reason']}")
    click.echo("\n* default backend for the target")
