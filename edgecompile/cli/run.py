"""`edgecompile run` (inference on arrays from a file) and `edgecompile bench` (latency)."""
from __future__ import annotations

import warnings
from pathlib import Path

import click

from edgecompile.cli.common import echo_warnings, emit_json, json_option, save_npz

remote_options = [
    click.option("--remote", metavar="HOST:PORT",
                 help="Run on a board behind this TVM RPC tracker (loopback only; TVM and ONNX Runtime bundles)."),
    click.option("--key", metavar="KEY", help="The board's key on the tracker (with --remote), e.g. rpi5."),
    click.option("--wait", type=click.FloatRange(min=0), default=30.0, show_default=True,
                 help="Seconds to wait for a board with KEY to register (with --remote)."),
]


def with_remote_options(fn):
    for opt in reversed(remote_options):
        fn = opt(fn)
    return fn


def open_runner(bundle_dir, threads, remote, key, wait):
    """The bundle's Runner: local (edgecompile.runtime.load) or on a board behind a tracker."""
    from edgecompile.errors import ConfigError

    if bool(remote) != bool(key):
        raise ConfigError("--remote and --key go together",
                          hint="e.g. --remote 127.0.0.1:9190 --key rpi5 (see `edgecompile device list`)")
    if remote:
        if threads:
            raise ConfigError("--threads cannot be set on a board", hint="the board's server uses its own thread pool")
        from edgecompile.targets.tvm.remote import load as remote_load

        return remote_load(bundle_dir, remote, key, wait=wait)
    from edgecompile.runtime import load

    return load(bundle_dir, threads=threads)


# Outputs up to this many elements are included as values in `run --json`; larger ones need -o.
JSON_VALUES_LIMIT = 1_000_000


def read_feeds(path: str | Path, inputs) -> tuple[dict, "object | None"]:
    """Arrays for the runner from `.npy` (single-input models) or `.npz` (arrays named after the
    inputs, plus optional `labels`). Shapes and dtypes are checked by the runner itself."""
    import numpy as np

    from edgecompile.errors import DataError

    path = Path(path)
    names = [s.name for s in inputs]
    if not path.is_file():
        raise DataError(f"input file {str(path)!r} does not exist", hint="pass an existing .npy or .npz file")
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: input must be a .npy or .npz file, got {path.suffix or 'no suffix'!r}",
                        hint="save arrays with numpy.save / numpy.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable {path.suffix} file ({exc.__class__.__name__})",
                        hint="save arrays with numpy.save / numpy.savez (no pickled objects)") from None
    if path.suffix == ".npy":
        if len(names) != 1:
            raise DataError(f"{path}: a .npy holds one array, but the model has inputs {names}",
                            hint="use a .npz with one array per input name")
        return {names[0]: loaded}, None
    with loaded as z:
        arrays = {k: z[k] for k in z.files}
    labels = arrays.pop("labels", None)
    return arrays, labels


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("-i", "--input", "input_path", type=click.Path(),
              help=".npy (single-input models) or .npz with arrays named after the inputs (+ optional labels).")
@click.option("--text", "texts", multiple=True, metavar="TEXT",
              help="Text bundles: a text to embed or classify (repeatable) instead of --input.")
@click.option("--pair", "pairs", multiple=True, metavar="TEXT",
              help="Pair models (cross-encoders, NLI): the second text of each --text, in the same order.")
@click.option("-o", "--output", type=click.Path(), help="Write the outputs to this .npz (named after the outputs).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@with_remote_options
@json_option
def run(bundle_dir, input_path, texts, pairs, output, threads, remote, key, wait, json_mode):
    """Run the bundle in BUNDLE_DIR on the arrays in --input, or on --text for text bundles.

    Inputs are checked (names, dtypes, shapes) and refused with exit 2 when wrong; NaN/inf inputs
    are run with a warning. Texts longer than the bundle's max length are truncated with a warning."""
    import numpy as np

    if bool(input_path) == bool(texts):
        raise click.UsageError("pass either --input FILE or --text TEXT (repeatable)")
    if pairs and not texts:
        raise click.UsageError("--pair goes with --text (one --pair per --text)")
    if texts:
        from edgecompile.cli.textrun import run_texts

        if pairs and len(pairs) != len(texts):
            raise click.UsageError(f"{len(pairs)} --pair for {len(texts)} --text: give one --pair per --text")
        items = list(zip(texts, pairs)) if pairs else list(texts)
        run_texts(open_runner(bundle_dir, threads, remote, key, wait), items, output, json_mode)
        return
    with open_runner(bundle_dir, threads, remote, key, wait) as runner:
        board = getattr(runner, "board", None)
        feeds, labels = read_feeds(input_path, runner.inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            outputs = runner.run(feeds)
        manifest = runner.bundle.manifest if runner.bundle is not None else {}
    notes = echo_warnings(caught)
    output = save_npz(output, outputs)
    result = {"bundle": str(bundle_dir), "bundle_id": manifest.get("bundle_id"),
              "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()},
              "outputs": {}, "output_file": output, "warnings": notes}
    if board:
        result["board"] = board
    first = next(iter(outputs.values()))
    if first.ndim == 2 and first.shape[1] > 1 and manifest.get("metric") in ("top1", "top1_agreement"):
        top1 = first.argmax(1)
        class_labels = manifest.get("labels")
        result["top1"] = [class_labels[i] if class_labels else int(i) for i in top1]
        if labels is not None and len(labels) == len(top1):
            result["accuracy_top1"] = float(np.mean(top1 == np.asarray(labels)))
    for name, arr in outputs.items():
        entry = {"shape": list(arr.shape), "dtype": arr.dtype.name}
        if json_mode and arr.size <= JSON_VALUES_LIMIT:
            entry["values"] = arr.tolist()
        result["outputs"][name] = entry
    if json_mode:
        emit_json(result)
        return
    if board:
        click.echo(f"ran on board {board['key']!r} via {board['tracker']}"
                   + (" (emulated)" if board.get("emulated") else "") + f", {board.get('arch', '?')}")
    for name, e in result["outputs"].items():
        click.echo(f"{name}: shape {e['shape']} {e['dtype']}")
    if "top1" in result:
        shown = result["top1"][:20]
        click.echo(f"top-1: {' '.join(map(str, shown))}" + (" ..." if len(result["top1"]) > 20 else ""))
    if "accuracy_top1" in result:
        click.echo(f"top-1 accuracy vs labels: {100 * result['accuracy_top1']:.2f} % (n={len(result['top1'])})")
    if output:
        click.echo(f"outputs written to {output}")


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--runs", type=click.IntRange(min=1),
              help="Timed runs (exactly N). Default: at least 50 runs and at least 1 s.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed warm-up runs.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: the runtime's).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size for dynamic batch dimensions.")
@click.option("--accuracy", is_flag=True,
              help="Also measure the task metric on the bundle's evaluation data (or --data) with the same runner.")
@click.option("--data", type=click.Path(), help=".npz for --accuracy (arrays named after the inputs + labels).")
@with_remote_options
@json_option
def bench(bundle_dir, runs, warmup, threads, batch, accuracy, data, remote, key, wait, json_mode):
    """Latency of the bundle in BUNDLE_DIR on synthetic inputs (p50/p90/p99 through the runtime's Runner).

    With --remote/--key the bundle's TVM library runs on a board behind a TVM RPC tracker and is
    timed there (network round trips are not counted); the report names the board."""
    from edgecompile.verify.bench import latency, synthetic_feeds
    from edgecompile.runtime.machine import cpu_info
    from edgecompile.verify.regression import task_accuracy

    if data and not accuracy:
        raise click.UsageError("--data is the evaluation data of --accuracy")
    # one runner for latency and --accuracy, local or on a board
    with open_runner(bundle_dir, threads, remote, key, wait) as runner:
        if not remote and (runner.bundle.manifest.get("frontend") or {}).get("kind") == "generation":
            return _bench_generation(bundle_dir, runner, threads, json_mode)     # per token, not per call
        feeds = synthetic_feeds(runner.inputs, batch)
        if remote:
            res = runner.latency(feeds, runs=runs or 50, warmup=warmup)
        elif runs is None:      # at least 50 runs and 1 s
            res = latency(runner, feeds, warmup=warmup, min_runs=50, min_seconds=1.0, threads=threads)
        else:                   # exactly `runs`
            res = latency(runner, feeds, warmup=warmup, min_runs=runs, max_runs=runs, min_seconds=0.0,
                          threads=threads)
        if accuracy:
            res["accuracy"] = task_accuracy(runner, runner.bundle, data)
        manifest = runner.bundle.manifest
    res = {"bundle": str(bundle_dir), "bundle_id": manifest.get("bundle_id"), "backend": manifest.get("backend"),
           "target": manifest.get("target"), "precision": manifest.get("precision"),
           **({} if remote else {"cpu": cpu_info()}), **res}
    if json_mode:
        emit_json(res)
        return
    if remote:
        _echo_remote(bundle_dir, res)
    else:
        click.echo(f"{bundle_dir}: {res['backend']} {res['precision']}, batch {res['batch']}, "
                   f"{res['threads']} threads, {res['runs']} runs after {res['warmup']} warm-up")
        click.echo(f"  p50 {res['p50']:.3f} ms   p90 {res['p90']:.3f} ms   p99 {res['p99']:.3f} ms   "
                   f"mean {res['mean']:.3f} ms   min {res['min']:.3f} ms")
        click.echo(f"  on {res['cpu']['model']} ({res['cpu']['cores']} cores)")
    _echo_accuracy(res)


def _bench_generation(bundle_dir, runner, threads, json_mode) -> None:
    from edgecompile.compiler.decoder_measure import measure_frontend
    from edgecompile.runtime.machine import cpu_info

    res = {"bundle": str(bundle_dir), "precision": runner.bundle.manifest.get("precision"),
           **measure_frontend(runner.frontend, threads), "cpu": cpu_info()}
    if json_mode:
        emit_json(res)
        return
    ttft = ", ".join(f"{k} tokens {v:.1f} ms" for k, v in res["ttft_ms"].items())
    pt = res["per_token_ms"]
    click.echo(f"{bundle_dir}: decoder, {res['precision']}, batch 1, {res['threads']} threads")
    click.echo(f"  TTFT (prefill): {ttft}")
    click.echo(f"  decode: {res['decode_tokens_per_s']:.1f} tokens/s; per token p50 {pt['p50']:.3f} ms, "
               f"p99 {pt['p99']:.3f} ms ({pt['n']} tokens, context {pt['context']})")
    click.echo(f"  on {res['cpu']['model']} ({res['cpu']['cores']} cores)")


def _echo_accuracy(res: dict) -> None:
    acc = res.get("accuracy")
    if acc:
        click.echo(f"  {acc['metric']} {acc['value']:.4f} on {acc['data']} (n={acc['n']})")


def _echo_remote(bundle_dir, res: dict) -> None:
    board = res["board"]
    where = "emulated board" if res["emulated"] else "board"
    click.echo(f"{bundle_dir}: {res['backend']} {res['precision']} for {res['target']}, batch {res['batch']}, "
               f"{res['runs']} runs after {res['warmup']} warm-up, on {where} {res['key']!r} via {res['tracker']}")
    label = " (emulated: not a real board's speed)" if res["emulated"] else ""
    click.echo(f"  p50 {res['p50']:.3f} ms   p90 {res['p90']:.3f} ms   p99 {res['p99']:.3f} ms   "
               f"mean {res['mean']:.3f} ms   min {res['min']:.3f} ms{label}")
    click.echo(f"  board: {board.get('arch', '?')}, {board.get('threads', '?')} threads, "
               f"TVM {board.get('tvm_version', '?')}")
