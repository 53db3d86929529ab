"""`edgecompile run` (inference on arrays from a file) and `edgecompile bench` (latency)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

from edgecompile.commands import emit_json, json_option

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
@click.option("-i", "--input", "input_path", required=True, type=click.Path(),
              help=".npy (single-input models) or .npz with arrays named after the inputs (+ optional labels).")
@click.option("-o", "--output", type=click.Path(), help="Write the outputs to this .npz (named after the outputs).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@json_option
def run(bundle_dir, input_path, output, threads, json_mode):
    """Run the bundle in BUNDLE_DIR on the arrays in --input.

    Inputs are checked (names, dtypes, shapes) and refused with exit 2 when wrong; NaN/inf inputs
    are run with a warning."""
    import numpy as np

    from edgecompile.runtime import load

    with load(bundle_dir, threads=threads) as runner:
        feeds, labels = read_feeds(input_path, runner.inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            outputs = runner.run(feeds)
        manifest = runner.bundle.manifest if runner.bundle is not None else {}
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    if output:
        out = Path(output)
        if out.suffix != ".npz":
            out = out.with_name(out.name + ".npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, **outputs)
        os.replace(tmp, out)
        output = str(out)
    result = {"bundle": str(bundle_dir), "bundle_id": manifest.get("bundle_id"),
              "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()},
              "outputs": {}, "output_file": output, "warnings": notes}
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
@json_option
def bench(bundle_dir, runs, warmup, threads, batch, json_mode):
    """Latency of the bundle in BUNDLE_DIR on synthetic inputs (p50/p90/p99 through the runtime's Runner)."""
    from edgecompile.bench import bench as run_bench
    from edgecompile.bundle import Bundle
    from edgecompile.machine import cpu_info

    if runs is None:
        res = run_bench(bundle_dir, runs=50, warmup=warmup, threads=threads, batch=batch, min_seconds=1.0)
    else:
        res = run_bench(bundle_dir, runs=runs, max_runs=runs, warmup=warmup, threads=threads, batch=batch,
                        min_seconds=0.0)
    manifest = Bundle.open(bundle_dir, verify=False).manifest
    res = {"bundle": str(bundle_dir), "bundle_id": manifest.get("bundle_id"), "backend": manifest.get("backend"),
           "precision": manifest.get("precision"), "cpu": cpu_info(), **res}
    if json_mode:
        emit_json(res)
        return
    click.echo(f"{bundle_dir}: {res['backend']} {res['precision']}, batch {res['batch']}, "
               f"{res['threads']} threads, {res['runs']} runs after {res['warmup']} warm-up")
    click.echo(f"  p50 {res['p50']:.3f} ms   p90 {res['p90']:.3f} ms   p99 {res['p99']:.3f} ms   "
               f"mean {res['mean']:.3f} ms   min {res['min']:.3f} ms")
    click.echo(f"  on {res['cpu']['model']} ({res['cpu']['cores']} cores)")
