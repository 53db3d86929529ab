"""Apache TVM (Relax + MetaSchedule) for x86-64 and AArch64 CPUs.

Build: ONNX -> Relax (`tvm.relax.frontend.onnx`) with a static batch of 1 -> MetaSchedule tuning
records (kept in the cache per target, keyed by kernel workload, reused automatically; see tune.py) -> `tvm.compile`
through `compile_relax` -> a shared library, cross-linked with aarch64-linux-gnu-gcc for ARM boards.

Run: `targets/tvm/run.py` (what the runtime imports).

Public, stable API (also used by the TensorRT backend for its AArch64 CPU fallback):

    compile_library(model, profile, out_path, *, tune_trials=0, tune_timeout=None, progress=None,
                    cache=True) -> dict
    load_library(path, inputs, outputs, threads=None) -> Runner
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path


from edgecompile.errors import CompileError, TargetUnavailableError, first_line
from edgecompile.targets.base import Artifacts, Availability, Backend, BuildContext
from edgecompile.targets.tvm import run
from edgecompile.targets.tvm.constants import fold_transposes
from edgecompile.targets.tvm.integer import integer_kernels
from edgecompile.targets.tvm.forms import target_forms
from edgecompile.targets.tvm.packed import pack_convs
from edgecompile.targets.tvm.run import COMPILED_BATCH, LIB_FILE, _host_arch, tvm_module
_CROSS_PACKAGE = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"}   # the crt files too


# -- importing TVM ------------------------------------------------------------------------------

def _tvm_compiler():
    tvm = tvm_module(runtime_only=False)
    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise CompileError("this process loaded TVM's runtime library only, so it cannot compile",
                           hint="build in a fresh process, or set EDGECOMPILE_TVM_FULL=1 before loading bundles")
    return tvm


# -- targets ----------------------------------------------------------------------------------------

def host_cpu() -> dict:
    """LLVM's name for this CPU and its features (what `-mcpu=native` would pick)."""
    tvm = _tvm_compiler()
    from tvm.target import codegen

    cpu = str(codegen.llvm_get_system_cpu())
    try:
        features = sorted(
            str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
        )
    except Exception:  # older LLVMs lack the query; the cpu name alone selects the features
        features = []
    return {"mcpu": cpu, "triple": str(codegen.llvm_get_system_triple()), "llvm_features": features}


def target_dict(profile) -> dict:
    """The TVM target description (JSON dict form) for a device profile. For the host profile the
    detected CPU is filled in (LLVM host detection)."""
    if not profile.tvm_target:
        raise CompileError(f"target {profile.name!r} has no TVM target description",
                           hint="use a CPU profile: cpu, arm64, rpi4, rpi5 (see `edgecompile targets`)")
    tgt = dict(profile.tvm_target)
    if profile.arch == _host_arch() and "mcpu" not in tgt and "mtriple" not in tgt:
        tgt["mcpu"] = host_cpu()["mcpu"]
        tgt.setdefault("num-cores", _physical_cores())
    return tgt


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def cross_compiler(profile) -> str | None:
    """The C compiler that links the library, or None for the host's default. Raises when missing."""
    cc = profile.cross_compiler
    if profile.arch == _host_arch() or not cc:
        return None
    if shutil.which(cc) is None:
        pkg = _CROSS_PACKAGE.get(cc, cc)
        raise TargetUnavailableError(f"cross compiler {cc} not found: it links {profile.arch} libraries for "
                                     f"target {profile.name!r}", hint=f"apt-get install {pkg}")
    return cc


_HANDLED_BY_FRONTEND = {"If", "Constant"}     # converted by the frontend itself, not via its convert map


# -- ONNX -> Relax ------------------------------------------------------------------------------------

def unsupported_nodes(proto) -> list[dict]:
    """Nodes of an ONNX ModelProto that TVM's Relax ONNX frontend cannot convert:
    [{"op_type", "name", "domain", "opset", "reason"}]."""
    _tvm_compiler()
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    convert_map = fe._get_convert_map()
    opsets = {imp.domain or "ai.onnx": imp.version for imp in proto.opset_import}
    bad = []

    def visit(graph):
        for node in graph.node:
            domain = node.domain or "ai.onnx"
            opset = opsets.get(domain)
            reason = None
            if node.op_type in _HANDLED_BY_FRONTEND and domain == "ai.onnx":
                pass
            elif domain not in ("ai.onnx", "ai.onnx.ml") and node.op_type not in convert_map:
                reason = f"custom domain {domain!r}"
            elif node.op_type not in convert_map:
                reason = "no converter in TVM's ONNX frontend"
            else:
                conv = convert_map[node.op_type]
                if isinstance(conv, type) and issubclass(conv, fe.OnnxOpConverter):
                    try:
                        conv.get_converter(opset or 1)
                    except NotImplementedError as exc:
                        reason = str(exc)
            if reason:
                bad.append({"op_type": node.op_type, "name": node.name or "(unnamed)", "domain": domain,
                            "opset": opset, "reason": reason})
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(proto.graph)
    return bad


def _describe_unsupported(bad: list[dict]) -> str:
    shown = "; ".join(f"{b['op_type']} node {b['name']!r} (opset {b['opset']}, {b['reason']})" for b in bad[:8])
    more = f"; and {len(bad) - 8} more" if len(bad) > 8 else ""
    return f"TVM cannot compile {len(bad)} node(s): {shown}{more}"


def _static_shapes(proto) -> dict[str, list[int]]:
    """Input shapes with a symbolic leading (batch) dimension fixed to COMPILED_BATCH."""
    inits = {i.name for i in proto.graph.initializer}
    shapes = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        shape = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif i == 0:
                shape.append(COMPILED_BATCH)
            else:
                raise CompileError(f"input {inp.name!r} has a dynamic dimension {i} ({d.dim_param or '?'}); "
                                   "the TVM backend compiles static shapes (only the batch may be dynamic)",
                                   hint="export the model with fixed shapes, or use --backend ort")
        shapes[inp.name] = shape
    return shapes


def tvm_graph(model):
    """The ModelProto TVM imports (and whose bytes key the tuning database): topologically sorted,
    which TVM's ONNX frontend requires and ONNX Runtime's quantizer does not always produce."""
    import onnx_ir as ir

    m = ir.from_proto(model) if not isinstance(model, ir.Model) else ir.from_proto(ir.to_proto(model))
    m.graph.sort()
    return ir.to_proto(m)


# Convolutions run NHWC with HWIO weights: MetaSchedule's CPU schedules vectorize along the innermost axis, the
# output channels (NCHW leaves them the image width: 7..112), and VNNI needs the input channels contiguous.
CONV_LAYOUT = ["NHWC", "HWIO"]


def to_relax(model, lowering: dict | None = None, forms=()):
    """onnx_ir.Model (or ModelProto) -> (Relax IRModule with weights bound, ONNX bytes hashed for the cache).
    QDQ convolutions/matmuls become integer kernels (integer.py), convolutions run in CONV_LAYOUT; what was
    done is written into `lowering` (layout, integer, float and packed kernel counts) when given. `forms`: the
    packed convolution forms the target's CPU has an instruction for (forms.target_forms): the convolutions
    they compute are taken from weights packed for it (packed.py)."""
    proto = tvm_graph(model)
    bad = unsupported_nodes(proto)
    if bad:
        raise CompileError(_describe_unsupported(bad), hint="build with --backend ort (target cpu), "
                           "or replace these ops before export")
    shapes = _static_shapes(proto)
    _tvm_compiler()
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    opset = next((i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")), None)
    try:
        mod = from_onnx(proto, shape_dict=shapes, opset=opset, keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
    except Exception as exc:   # a converter rejected a node's attributes / shapes
        raise CompileError(f"TVM's ONNX frontend failed: {first_line(exc)}",
                           hint="build with --backend ort (target cpu) for this model") from None
    info = {"conv_layout": "/".join(CONV_LAYOUT)}
    try:
        if any(n.op_type == "DequantizeLinear" for n in proto.graph.node):
            mod, counts = integer_kernels(mod)
            info.update(counts)
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": CONV_LAYOUT})(mod)
        mod = relax.transform.FoldConstant()(fold_transposes(mod))
        if forms:
            mod, counts = pack_convs(mod, forms)
            info.update(counts)
    except Exception as exc:   # a rewrite TVM rejects for this graph
        raise CompileError(f"lowering the graph for TVM (integer kernels, NHWC layout, packed convolutions) failed: "
                           f"{first_line(exc)}",
                           hint="build with --backend ort (target cpu) for this model, or report it") from None
    if lowering is not None:
        lowering.update(info)
    return mod, proto.SerializeToString(deterministic=True)


def graph_hash(onnx_bytes: bytes) -> str:
    return hashlib.sha256(onnx_bytes).hexdigest()


# -- compile ------------------------------------------------------------------------------------------

def compile_library(model, profile, out_path: Path, *, tune_trials: int = 0, tune_timeout: float | None = None,
                    progress=None, cache: bool = True, remote: dict | None = None) -> dict:
    """Compile an ONNX model (onnx_ir.Model) for `profile` into the shared library `out_path`.

    Writes `out_path` and `out_path.with_suffix('.json')` (the metadata below, read by load_library).
    Tuning: with `cache=True` the target's tuning records in the cache dir are reused (those of this
    graph's kernels, whichever graph they were tuned for); `tune_trials` more than they hold are run (a warm
    database is not re-tuned), bounded by `tune_timeout` minutes. `cache=False` tunes in a throwaway
    directory (or not at all).
    `remote` = {"tracker": "HOST:PORT", "key": KEY} measures the kernels on that board (RPC tracker).
    Returns JSON-serialisable metadata: target, cross_compiler, compiled_batch, tuning, files, timings.
    """
    from edgecompile.targets.tvm import tune as tvm_tune

    out_path = Path(out_path)
    cc = cross_compiler(profile)               # fail fast, before any heavy work
    tvm = _tvm_compiler()
    from tvm.s_tir import meta_schedule as ms

    tgt_dict = target_dict(profile)
    t0 = time.perf_counter()
    target = _make_target(tvm, tgt_dict)
    lowering = {}
    mod, onnx_bytes = to_relax(model, lowering, forms=target_forms(target))
    t_import = time.perf_counter() - t0
    key = tvm_tune.database_key(graph_hash(onnx_bytes), tgt_dict, tvm.__version__)
    with tvm_tune.open_database(key, tgt_dict, tvm.__version__, cache=cache) as db:
        tuning = db.tune(mod, target, tune_trials, tune_timeout, progress, runs_on_host=cc is None
                         and profile.arch == _host_arch(), remote=remote, cross_cc=cc)
        t1 = time.perf_counter()
        try:
            executable = ms.relax_integration.compile_relax(db.database, mod, target, None)
        except Exception as exc:
            raise CompileError(f"TVM failed to compile the model for {profile.name}: {first_line(exc)}",
                               hint="try --backend ort (target cpu), or report the model") from None
        t_compile = time.perf_counter() - t1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t2 = time.perf_counter()
    try:
        if cc:
            from tvm.support import cc as tvm_cc

            executable.export_library(str(out_path), fcompile=tvm_cc.cross_compiler(cc))
        else:
            executable.export_library(str(out_path))
    except Exception as exc:
        raise CompileError(f"linking the TVM library failed: {first_line(exc)}",
                           hint=f"check that {cc or 'the host C compiler (g++)'} works") from None
    t_link = time.perf_counter() - t2
    meta_path = out_path.with_suffix(".json")
    meta = {
        "format": "edgecompile-tvm-library/v1",
        "tvm_version": tvm.__version__,
        "target": tgt_dict,
        "arch": profile.arch,
        "cross_compiler": cc,
        "host_cpu": host_cpu() if profile.arch == _host_arch() and "mtriple" not in tgt_dict else None,
        "compiled_batch": COMPILED_BATCH,
        "entry": "main",
        "graph_sha256": graph_hash(onnx_bytes),
        "lowering": lowering,
        "tuning": tuning,
        "timings_s": {"import": round(t_import, 3), "compile": round(t_compile, 3), "link": round(t_link, 3)},
        "files": [out_path.name, meta_path.name],
    }
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _make_target(tvm, tgt_dict: dict):
    try:
        return tvm.target.Target(dict(tgt_dict))
    except Exception as exc:
        raise CompileError(f"invalid TVM target {tgt_dict}: {first_line(exc)}",
                           hint="fix tvm_target in targets/profiles.py") from None


# -- the Target ----------------------------------------------------------------------------------------


class TvmTarget(Backend):
    name = "tvm"
    run_module = "edgecompile.targets.tvm.run"
    config_section = "tvm"
    precisions = ("fp32", "int8")    # int8: the QDQ graph of the quantize pass, as integer kernels (integer.py)

    def compile(self, model, ctx: BuildContext) -> Artifacts:
        tvm_cfg = ctx.config.tvm
        remote = {"tracker": tvm_cfg.remote, "key": tvm_cfg.remote_key} if tvm_cfg.remote else None
        meta = compile_library(model, ctx.profile, ctx.writer.path(LIB_FILE), tune_trials=tvm_cfg.tune_trials,
                               tune_timeout=tvm_cfg.tune_timeout, progress=ctx.progress,
                               cache=ctx.options.get("tvm_cache", True), remote=remote)
        files = {LIB_FILE: "library", Path(LIB_FILE).with_suffix(".json").name: "library_meta"}
        notes = {}
        if meta["tuning"].get("untuned_warning"):
            notes["tvm"] = meta["tuning"]["untuned_warning"]
            if ctx.progress is not None:
                ctx.progress.warn(meta["tuning"]["untuned_warning"])
        return Artifacts(files=files, backend_options={k: meta[k] for k in (
            "tvm_version", "target", "cross_compiler", "host_cpu", "compiled_batch", "graph_sha256", "lowering",
            "tuning", "timings_s")}, notes=notes)

    def auto_candidate(self, model, plan) -> Availability:
        """`--backend auto` measures TVM only where its tuning database for this graph and target is
        warm: untuned TVM is ~100x slower than ONNX Runtime, and auto never starts a long tuning."""
        from edgecompile.targets.tvm import tune as tvm_tune

        proto = tvm_graph(model)
        bad = unsupported_nodes(proto)
        if bad:                               # a per-node fact: dropped with its reason, never a build failure
            return Availability(False, _describe_unsupported(bad), hint="--backend ort runs these ops")
        tvm = _tvm_compiler()
        key = tvm_tune.database_key(graph_hash(proto.SerializeToString(deterministic=True)),
                                    target_dict(plan.profile), tvm.__version__)
        trials = tvm_tune.trials_in_cache(key)
        if not trials:
            return Availability(False, "no tuning database for this graph and target (untuned TVM is far slower)",
                                hint="tune once: edgecompile build ... --backend tvm --tune 200")
        return Availability(True, f"tuning database {key[:12]} has {trials} trials")

    def load(self, bundle, *, threads: int | None = None, validate: bool = True, progress=None):
        """The compiler measures candidates in a process that also compiles: full TVM, not the runtime library."""
        return run.load(bundle, threads=threads, validate=validate, runtime_only=False)
