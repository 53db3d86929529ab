"""atheris fuzzing of the bundle reader (manifest + artifact layout + ONNX external-data walker) and the ONNX
source loader (read_onnx + up-front validation + graph inputs). Any exception other than the project's
EdgeCompileError is a crash; libFuzzer's -timeout catches hangs.

    python bench/fuzz.py bundle --runs 100000        # or onnx; --seconds N instead of --runs
    python bench/fuzz.py all --runs 100000 [--seconds 150]   # both (stopping at whichever limit comes first),
                                                             # and write bench/results/fuzz.txt

Seeds: a valid manifest / a valid tiny ONNX model (mutations start from real inputs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tiny_onnx_bytes() -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "W")
    g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def seed_manifest(model: bytes) -> bytes:
    import hashlib

    return json.dumps({
        "schema_version": 1, "bundle_id": "0" * 64, "backend": "ort", "precision": "fp32",
        "inputs": [{"name": "x", "shape": ["N", 4], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": ["N", 4], "dtype": "float32"}],
        "measured_on": {"cpu": {"arch": "x86_64", "flags": ["avx2"]}},
        "backend_options": {"config": {"A": 1}}, "frontend": None,
        "artifacts": {"model.onnx": {"sha256": hashlib.sha256(model).hexdigest(), "size": len(model),
                                     "role": "model"}},
    }).encode()


def run_target(target: str, runs: int | None, seconds: int | None, corpus: Path) -> None:
    import atheris

    with atheris.instrument_imports():
        from edgecompile.errors import EdgeCompileError
        from edgecompile.runtime.bundle import Bundle
        from edgecompile.runtime.onnxrefs import ProtoError, external_locations
        from edgecompile.runtime.schema import check_manifest, parse_limited
    model = tiny_onnx_bytes()
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    if target == "bundle":
        (corpus / "seed").write_bytes(seed_manifest(model))
        (work / "model.onnx").write_bytes(model)

        def one(data: bytes) -> None:
            try:                                # parse + schema in memory (what Bundle.open does first) ...
                check_manifest(parse_limited(data, work / "manifest.json"), work / "manifest.json")
            except EdgeCompileError:
                pass
            else:                               # ... and the whole open (layout, hashes) when the schema passes
                (work / "manifest.json").write_bytes(data)
                try:
                    Bundle.open(work, verify=True)
                except EdgeCompileError:
                    pass
            try:
                external_locations(data)       # the runtime's protobuf walker on arbitrary bytes
            except ProtoError:
                pass
    else:
        (corpus / "seed").write_bytes(model)
        from edgecompile.compiler.inspection import graph_inputs, read_onnx
        from edgecompile.compiler.validate import quiet_library_logs, validate_onnx

        quiet_library_logs(show=False)
        path = work / "m.onnx"

        def one(data: bytes) -> None:
            path.write_bytes(data)
            try:
                proto = read_onnx(path)
                validate_onnx(path, proto)
                graph_inputs(proto)
            except EdgeCompileError:
                pass

    argv = [sys.argv[0], str(corpus), "-timeout=10", "-rss_limit_mb=4096", "-print_final_stats=1"]
    argv += ([f"-runs={runs}"] if runs else []) + ([f"-max_total_time={seconds}"] if seconds else [])
    atheris.Setup(argv, one)
    atheris.Fuzz()


def report(runs: int | None, seconds: int | None) -> int:
    """Run both targets in subprocesses; write bench/results/fuzz.txt with executions and crashes."""
    lines = [f"atheris fuzzing, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.lower().startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown"
    lines.append(f"cpu: {cpu} ({os.cpu_count()} cores)")
    worst = 0
    for target in ("bundle", "onnx"):
        t0 = time.perf_counter()
        args = [sys.executable, __file__, target] + (["--runs", str(runs)] if runs else []) + (
            ["--seconds", str(seconds)] if seconds else [])
        proc = subprocess.run(args, capture_output=True, text=True)
        execs = [ln for ln in proc.stderr.splitlines() if "stat::number_of_executed_units" in ln]
        n = execs[-1].split(":")[-1].strip() if execs else "?"
        crashed = proc.returncode != 0
        worst = max(worst, proc.returncode)
        lines.append(f"{target}: {n} executions in {time.perf_counter() - t0:.0f} s, "
                     f"{'CRASH (exit ' + str(proc.returncode) + ')' if crashed else '0 crashes'}")
        if crashed:
            lines += proc.stderr.strip().splitlines()[-15:]
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "bench" / "results" / "fuzz.txt").write_text(text)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", choices=["bundle", "onnx", "all"])
    ap.add_argument("--runs", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.target == "all" or args.report:
        sys.exit(report(args.runs, args.seconds))
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-corpus-{args.target}-"))
    run_target(args.target, args.runs, args.seconds or (None if args.runs else 20), corpus)


if __name__ == "__main__":
    main()
