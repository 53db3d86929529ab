"""`edgecompile compare A B`: the same inputs through two builds, and where they part ways.

A and B are each a bundle directory, an `.onnx` file or a model package (`models/digits`, `digits`).
A is the reference. The result has

* the task metric of both sides (with labels) or B's agreement with A (without), and raw output
  similarity (cosine, max-abs, SNR) per output;
* for ONNX-based sides, the first diverging node: matched nodes (by name, else by position among
  nodes of the same op type) are exposed as extra graph outputs and bisected in topological order
  (a few probes per round, each round one ORT run per side) until the first node whose output
  differs from A's by more than `tolerance` (relative L2 error) is pinned down.

The search assumes divergence persists downstream (a node that diverged makes its consumers
diverge); a divergence that a later layer fully masks can be missed, which the result states.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecompile.data import Dataset, TensorSpec, load_npz, parse_spec
from edgecompile.errors import DataError, ModelLoadError
from edgecompile.verify.localize import (
    DEFAULT_TOLERANCE, LOCALIZE_SAMPLES, _collect, localize, node_errors,
)
from edgecompile.verify.metrics import METRICS, bound_metric, get_metric, label_free, raw_similarity

SYNTHETIC_SAMPLES = 64


@dataclass
class Side:
    """One thing being compared: how to run it and, where it has one, its ONNX graph."""

    spec: str
    kind: str                                  # "bundle" | "onnx" | "model"
    description: str
    inputs: list[TensorSpec]
    outputs: list[str]
    metric: str | None
    run: Callable[..., list[np.ndarray]]     # (dataset, progress=None) -> outputs
    onnx: Callable[[], bytes | None]           # lazily: serialized ONNX (None: not ONNX-based)
    default_data: Callable[[], Dataset | None] = lambda: None
    onnx_note: str = ""

    def to_dict(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "description": self.description,
                "inputs": [s.to_dict() for s in self.inputs], "outputs": self.outputs, "metric": self.metric}


# -- opening the two sides ------------------------------------------------------------------------

def open_side(spec: str | Path) -> Side:
    text = str(spec)
    path = Path(text)
    if path.is_dir() and (path / "manifest.json").is_file():
        return _bundle_side(path)
    if path.suffix == ".onnx":
        return _onnx_side(path)
    return _model_side(text)


def _bundle_side(path: Path) -> Side:
    from edgecompile.runtime.bundle import Bundle

    bundle = Bundle.open(path)            # verifies schema and hashes
    m = bundle.manifest
    onnx_files = [rel for rel, info in sorted(m["artifacts"].items()) if rel.endswith(".onnx")]
    onnx_files.sort(key=lambda rel: m["artifacts"][rel].get("role") != "model")

    def run(ds: Dataset, progress=None) -> list[np.ndarray]:
        from edgecompile.runtime import load

        with load(path) as runner:
            return _collect(lambda feeds: list(runner.run(feeds).values()), ds, progress=progress)

    def onnx_bytes():
        return (path / onnx_files[0]).read_bytes() if onnx_files else None

    def default_data():
        ev = (m.get("data") or {}).get("evaluation") or {}
        return _bound_data(ev.get("identity"), [TensorSpec.from_dict(d) for d in m["inputs"]])

    desc = (f"bundle {m.get('model', {}).get('name', '?')} {m.get('target', '?')}/{m['backend']} "
            f"{m.get('precision', '?')}")
    return Side(str(path), "bundle", desc, [TensorSpec.from_dict(d) for d in m["inputs"]],
                [d["name"] for d in m["outputs"]], m.get("metric"), run, onnx_bytes, default_data,
                "" if onnx_files else f"the {m['backend']} bundle has no ONNX artifact")


def _onnx_side(path: Path) -> Side:
    from edgecompile.source import resolve_source

    src = resolve_source(path)             # validates the file (ModelLoadError otherwise)
    data = path.read_bytes()

    def run(ds: Dataset, progress=None) -> list[np.ndarray]:
        from edgecompile.targets.ort.run import create_session

        sess = create_session(data)
        return _collect(lambda feeds: sess.run(None, feeds), ds, progress=progress)

    return Side(str(path), "onnx", f"onnx {path.name}", src.inputs, src.outputs, None, run, lambda: data)


def _model_side(text: str) -> Side:
    from edgecompile.source import resolve_source

    src = resolve_source(text)
    if src.kind != "torch":
        raise ModelLoadError(f"{text}: cannot compare this kind of model", hint="pass a bundle, .onnx or model package")
    cache: dict[str, bytes] = {}

    def run(ds: Dataset, progress=None) -> list[np.ndarray]:
        from edgecompile.compiler.training import predict

        outs = predict(src.module(), ds)        # torch: one pass, fast for the bundled models
        return [outs[i] for i in sorted(outs)]

    def onnx_bytes():
        if "onnx" not in cache:
            import onnx_ir as ir

            from edgecompile.compiler.export import export_torch

            from edgecompile.source import load_data

            example = load_data(None, src, default=src.default_evaluation)
            cache["onnx"] = ir.to_proto(export_torch(src.module(), src, example)).SerializeToString()
        return cache["onnx"]

    def default_data():
        from edgecompile.source import load_data

        return load_data(None, src, default=src.default_evaluation)

    return Side(text, "model", f"model {src.name} (torch fp32)", src.inputs, list(src.outputs), src.metric,
                run, onnx_bytes, default_data)


def _bound_data(identity: str | None, inputs: list[TensorSpec]) -> Dataset | None:
    """The evaluation split a bundle was measured on, when it is a built-in model's bound split."""
    if not identity or not parse_spec(identity):
        return None
    from edgecompile.source import BUILTIN_MODELS, load_data, resolve_source

    name = parse_spec(identity)[0]
    if name not in BUILTIN_MODELS:
        return None
    src = resolve_source(name)
    if [s.name for s in src.inputs] != [s.name for s in inputs]:
        return None
    return load_data(identity, src, default=None)


def _synthetic(inputs: list[TensorSpec], n: int) -> Dataset:
    from edgecompile.verify.bench import synthetic_feeds

    return Dataset(f"synthetic[{n}]", synthetic_feeds(inputs, n), None, synthetic=True)


def choose_data(a: Side, b: Side, data: str | Path | None, samples: int | None) -> tuple[Dataset, list[str]]:
    notes = []
    if [s.name for s in a.inputs] != [s.name for s in b.inputs]:
        raise DataError(f"A and B take different inputs ({[s.name for s in a.inputs]} vs {[s.name for s in b.inputs]})",
                        hint="compare builds of the same model")
    if data is not None:
        ds = load_npz(data, a.inputs)
    else:
        ds = a.default_data() or b.default_data()
        if ds is None:
            ds = _synthetic(a.inputs, samples or SYNTHETIC_SAMPLES)
            notes.append("no data given: random inputs of the declared shapes (pass --data FILE.npz for real ones)")
    if samples:
        ds = ds.take(samples)
    return ds, notes


# -- the comparison -------------------------------------------------------------------------------

def compare(a: str | Path | Side, b: str | Path | Side, *, data: str | Path | None = None,
            samples: int | None = None, tolerance: float = DEFAULT_TOLERANCE, localize: bool = True,
            per_node: bool = False, progress=None) -> dict:
    """Python API behind `edgecompile compare`: A is the reference, B the candidate."""
    a = a if isinstance(a, Side) else open_side(a)
    b = b if isinstance(b, Side) else open_side(b)
    ds, notes = choose_data(a, b, data, samples)
    step = progress.step if progress is not None else _nostep
    with step("run A", a.description):
        out_a = a.run(ds, progress)
    with step("run B", b.description):
        out_b = b.run(ds, progress)
    names = a.outputs if a.outputs == b.outputs else [f"{x}|{y}" for x, y in zip(a.outputs, b.outputs)]
    if len(out_a) != len(out_b):
        notes.append(
            f"A has {len(out_a)} outputs and B {len(out_b)}: comparing the first {min(len(out_a), len(out_b))}"
        )
    outputs = {}
    for name, x, y in zip(names, out_a, out_b):
        outputs[name] = (
            raw_similarity(y, x)
            if x.shape == y.shape
            else {"error": f"shapes differ: {list(x.shape)} vs {list(y.shape)}"}
        )
    result = {
        "a": a.to_dict(), "b": b.to_dict(), "data": ds.describe(),
        "task": _task_metric(a, b, ds, out_a[0], out_b[0]) if out_a[0].shape == out_b[0].shape else None,
        "outputs": outputs, "notes": notes,
    }
    if localize:
        with step("localize", "first diverging node"):
            result["localization"] = localize_sides(a, b, ds.take(LOCALIZE_SAMPLES), tolerance, progress)
    if per_node:
        if a.onnx() is None or b.onnx() is None:
            result["nodes"] = {"status": "not applicable", "reason": "both sides must be ONNX-based"}
        else:
            with step("per node", "every matched node"):
                result["nodes"] = node_errors(a.onnx(), b.onnx(), ds.take(LOCALIZE_SAMPLES))
    return result


class _nostep:
    def __init__(self, *a):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _task_metric(a: Side, b: Side, ds: Dataset, ya: np.ndarray, yb: np.ndarray) -> dict:
    name = a.metric or b.metric or ("top1" if ds.labels is not None and ya.ndim == 2 and ya.shape[1] > 1 else None)
    classifier = ya.ndim == 2 and ya.shape[1] > 1 and (name in (None, "top1", "top1_agreement"))
    metric = get_metric(name) if name else (METRICS["top1_agreement"] if classifier else METRICS["output_cosine"])
    res: dict = {"metric": metric.name, "kind": metric.kind, "higher_is_better": metric.higher_is_better}
    if metric.dataset_level and (ds.meta or {}).get("detection"):
        from edgecompile.verify.evaluate import compare as score      # mAP of both sides (issue 25)

        if ds.labels is None:           # no boxes: B's mAP against A's detections (agreement)
            metric = label_free(metric, classifier, detection=True)
            res["metric"] = metric.name
        e = score(yb, ya, ds, metric, "A")
        res.update(a=e.reference, b=e.candidate, delta=e.delta)
        return res
    if metric.dataset_level:
        metric = METRICS["output_cosine"]                       # no boxes to score against: outputs only
        res.update(metric=metric.name, kind=metric.kind, higher_is_better=True, a=1.0, b=metric.value(yb, ya))
        res["delta"] = res["b"] - res["a"]
        return res
    if metric.needs_labels and ds.labels is not None:
        res["a"] = metric.value(ya, ds.labels)
        res["b"] = metric.value(yb, ds.labels)
        res["delta"] = res["b"] - res["a"]
    else:
        metric = bound_metric(label_free(metric, classifier), ya)     # confident_agreement, or its fallback
        res.update(metric=metric.name, kind=metric.kind, higher_is_better=metric.higher_is_better,
                   a=1.0, b=metric.value(yb, ya))
        res["delta"] = res["b"] - res["a"]
    if classifier:
        res["agreement"] = METRICS["top1_agreement"].value(yb, ya)
    return res


def localize_sides(a: Side, b: Side, ds: Dataset, tolerance: float = DEFAULT_TOLERANCE, progress=None) -> dict:
    for side in (a, b):
        data = side.onnx()
        if data is None:
            return {"status": "not applicable", "reason": f"{side.spec}: {side.onnx_note or 'not ONNX-based'}"}
    return localize(a.onnx(), b.onnx(), ds, tolerance, progress)


# -- text output ----------------------------------------------------------------------------------

def render_text(res: dict) -> str:
    d = res["data"]
    lines = [f"A (reference): {res['a']['description']}  [{res['a']['spec']}]",
             f"B:             {res['b']['description']}  [{res['b']['spec']}]",
             f"data:          {d['identity']} ({d['n']} samples{', labels' if d['labels'] else ', no labels'})"]
    lines += [f"note: {n}" for n in res.get("notes", [])]
    t = res.get("task")
    if t:
        pct = t["kind"] == "percentage"
        f = (lambda v: f"{100 * v:.2f} %") if pct else (lambda v: f"{v:.6g}")
        lines.append("")
        lines.append(f"  {t['metric']:<16} A {f(t['a'])}   B {f(t['b'])}   delta "
                     + (f"{100 * t['delta']:+.2f} pt" if pct else f"{t['delta']:+.6g}"))
        if "agreement" in t:
            lines.append(f"  {'agreement':<16} {100 * t['agreement']:.2f} % (B's top-1 equals A's)")
    for name, s in res["outputs"].items():
        if "error" in s:
            lines.append(f"  {name:<16} {s['error']}")
        else:
            lines.append(f"  {name:<16} cosine {s['cosine']:.6f}   max-abs {s['max_abs']:.4g}   SNR {_db(s['snr_db'])}")
    loc = res.get("localization")
    if loc:
        lines.append("")
        if loc["status"] == "diverged":
            fst = loc["first"]
            lines.append(f"first diverging node: {fst['node']} ({fst['op_type']})"
                         + (f"  [B: {fst['node_b']}]" if fst["node_b"] != fst["node"] else ""))
            lines.append(f"  rel. error {fst['rel_error']:.4g}   cosine {fst['cosine']:.6f}   "
                         f"max-abs {fst['max_abs']:.4g}   SNR {_db(fst['snr_db'])}")
            if "previous" in fst:
                p = fst["previous"]
                lines.append(f"  previous matched node {p['node']} ({p['op_type']}): rel. error {p['rel_error']:.3g}")
            else:
                lines.append("  (it is the first matched node: inputs feed it directly)")
        else:
            lines.append(f"localization: {loc['status']}: {loc.get('reason', '')}")
        if "matched_nodes" in loc:
            lines.append(f"  {loc['matched_nodes']} nodes matched by {loc['matching']}, tolerance {loc['tolerance']:g} "
                         f"(relative L2), {loc.get('rounds', 0)} bisection rounds on {loc['samples']} samples")
    nodes = res.get("nodes")
    if nodes and nodes.get("rows"):
        lines += [
            "",
            f"per-node error of B against A (cumulative, {nodes['samples']} samples, matched by {nodes['matching']}):",
            f"  {'node':<28} {'op':<14} {'rel. error':>10} {'cosine':>10}",
        ]
        lines += [f"  {r['node'][:28]:<28} {r['op_type'][:14]:<14} {r['rel_error']:>10.3g} {r['cosine']:>10.6f}"
                  for r in nodes["rows"]]
    elif nodes:
        lines.append(f"per-node errors: {nodes['status']}: {nodes['reason']}")
    return "\n".join(lines)


def _db(v: float) -> str:
    return "inf (identical)" if v == float("inf") else f"{v:.1f} dB"
