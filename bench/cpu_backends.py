"""Every cpu backend x precision, plus raw OpenVINO and raw ONNX Runtime on the same ONNX as peers,
timed side by side in one run (interleaved rounds, rotating order), printing ratios vs ORT fp32.

    .venv/bin/python bench/cpu_backends.py [--models resnet18,mobilenetv2,digits] [--rounds 9]
                                           [--round-seconds 0.3] [--threads N] [--keep DIR]

Per model: the torch model is exported once (the ORT fp32 bundle, reference = torch); every other
bundle is built from that same ONNX with the model's own calibration/evaluation splits as .npz
(explicit backend x precision rows use --force, so each row really is what it says; the `auto`
rows show what automatic choice ships). Peers: raw ORT (ORT_ENABLE_ALL) and raw OpenVINO with its
default settings (bf16 on CPUs that have it) and with an explicit f32 hint, on the fp32 ONNX and on
the QDQ ONNX our quantize pass wrote. Accuracy columns: task-metric delta of the bundle vs its
reference (bundles) or output cosine vs ORT fp32 (peers). Not part of CI.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


class Peer:
    """A raw engine session with the Runner's `.run(feeds)` shape, for side-by-side timing."""

    def __init__(self, name, run):
        self.name, self._run = name, run

    def run(self, feeds):
        return self._run(feeds)


def raw_ort(path, threads):
    from edgecompile.targets.ort.run import create_session

    s = create_session(str(path), threads=threads)
    return lambda feeds: s.run(None, feeds)


def raw_ov(path, threads, hint=None):
    import openvino as ov

    cfg = {"PERFORMANCE_HINT": "LATENCY"}
    if hint:
        cfg["INFERENCE_PRECISION_HINT"] = hint
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    req = ov.Core().compile_model(str(path), "CPU", cfg).create_infer_request()
    return lambda feeds: list(req.infer(feeds).values())


def save_npz(ds, path):
    arrays = dict(ds.inputs)
    if ds.labels is not None:
        arrays["labels"] = ds.labels
    np.savez(path, **arrays)
    return str(path)


def bench_model(name, work: Path, rounds: int, round_seconds: float, threads: int | None) -> list[dict]:
    import edgecompile
    from edgecompile.compiler import registry
    from edgecompile.compiler.autochoice import interleaved_latency
    from edgecompile.compiler.config import Config
    from edgecompile.verify.metrics import raw_similarity
    from edgecompile.source import load_data, resolve_source
    from edgecompile.targets.openvino.run import supports_bf16

    src = resolve_source(name)
    calib = load_data(None, src, default=src.default_calibration)
    evals = load_data(None, src, default=src.default_evaluation)
    cfg = Config().with_overrides({"data.calibration": save_npz(calib, work / f"{name}-calib.npz"),
                                   "data.evaluation": save_npz(evals, work / f"{name}-eval.npz")})
    print(f"\n== {name}: exporting + ORT fp32 bundle", flush=True)
    base = edgecompile.build(name, target="cpu", backend="ort", output=work / f"{name}-ort-fp32", threads=threads)
    onnx = base.path / "model.onnx"

    combos = [("openvino", "fp32")]
    if supports_bf16("CPU"):
        combos.append(("openvino", "bf16"))
    int8 = registry.has_pass("quantize")
    if int8:
        combos += [("ort", "int8"), ("openvino", "int8")]
    bundles = {("ort", "fp32"): base}
    for backend, prec in combos:
        print(f"== {name}: {backend} {prec}", flush=True)
        bundles[(backend, prec)] = edgecompile.build(onnx, target="cpu", backend=backend, precision=prec, force=True,
                                                     config=cfg, threads=threads,
                                                     output=work / f"{name}-{backend}-{prec}")
    for prec in (["int8"] if int8 else ["fp32"]):          # what `--target cpu --precision int8` ships
        print(f"== {name}: auto {prec}", flush=True)
        bundles[("auto", prec)] = edgecompile.build(onnx, target="cpu", backend="auto", precision=prec, config=cfg,
                                                    threads=threads, output=work / f"{name}-auto-{prec}")

    entries = []          # (label, runner-like, accuracy text)
    for (backend, prec), b in bundles.items():
        rep = b.report()
        acc = rep["accuracy"]
        label = f"bundle {backend} {prec}" + (f" -> {rep['backend']} {rep['precision']}" if backend == "auto" else "")
        acc_txt = f"{acc['metric']} {100 * acc['delta']:+.2f} pt" if acc else ""
        entries.append((label, edgecompile.runtime.load(b.path, threads=threads), acc_txt))
    peers = [("raw ORT, fp32 onnx", raw_ort(onnx, threads)),
             ("raw OpenVINO default, fp32 onnx", raw_ov(onnx, threads)),
             ("raw OpenVINO f32 hint, fp32 onnx", raw_ov(onnx, threads, "f32"))]
    if int8:
        qdq = bundles[("ort", "int8")].path / "model.onnx"
        peers += [
            ("raw ORT, QDQ onnx", raw_ort(qdq, threads)),
            ("raw OpenVINO default, QDQ onnx", raw_ov(qdq, threads)),
        ]
    feeds = {k: v[:1] for k, v in next(evals.batches(1)).items()}
    ref_batch = {k: v[:64] for k, v in evals.inputs.items()}
    ref_out = entries[0][1].run(ref_batch)
    ref_out = next(iter(ref_out.values()))
    for label, fn in peers:
        cos = raw_similarity(fn(ref_batch)[0], ref_out)["cosine"]
        entries.append((label, Peer(label, fn), f"cosine {cos:.4f} vs ORT fp32"))

    print(f"== {name}: timing {len(entries)} candidates, {rounds} interleaved rounds", flush=True)
    samples = interleaved_latency([e[1] for e in entries], feeds, rounds=rounds, round_seconds=round_seconds)
    base_p50 = float(np.median(samples[0]))
    rows = []
    for (label, runner, acc), s in zip(entries, samples):
        p50, p99 = float(np.median(s)), float(np.percentile(s, 99))
        rows.append({"model": name, "what": label, "p50": p50, "p99": p99, "ratio": base_p50 / p50, "acc": acc,
                     "runs": len(s)})
        if hasattr(runner, "close"):
            runner.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenetv2,digits")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--round-seconds", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="write bundles here instead of a temp dir")
    args = ap.parse_args()

    from edgecompile.runtime.machine import cpu_info, toolchain_versions

    cpu = cpu_info()
    tmp = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="edgecompile-bench-")
        work = Path(tmp.name)
    tv = toolchain_versions()
    head = (f"CPU: {cpu['model']} ({cpu['cores']} cores); flags: {' '.join(cpu['flags'])}\n"
            f"onnxruntime {tv.get('onnxruntime')}, openvino {tv.get('openvino')}; batch 1; threads "
            f"{args.threads or 'default'}; {args.rounds} interleaved rounds\n\n"
            "| model | runtime | p50 ms | p99 ms | speedup vs ORT fp32 bundle | accuracy |\n|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        new = bench_model(name.strip(), work, args.rounds, args.round_seconds, args.threads)
        rows += new
        print("\n" + head)           # each model's table as soon as it is done, all of them at the end
        for r in (rows if name == args.models.split(",")[-1] else new):
            print(f"| {r['model']} | {r['what']} | {r['p50']:.3f} | {r['p99']:.3f} | {r['ratio']:.2f}x | {r['acc']} |",
                  flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
