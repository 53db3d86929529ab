import subprocess
import sys

HEAVY = ("torch", "tvm", "openvino", "tensorrt", "onnx", "sklearn")


def _modules_after(code: str, cwd) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, cwd=cwd, check=True).stdout
    return set(out.split())


def test_import_edgecompile_is_light(tmp_path):
    mods = _modules_after("import edgecompile", tmp_path)
    assert not [m for m in mods if m.split(".")[0] in HEAVY]


def test_passes_and_targets_are_installed_under_edgecompile(tmp_path):
    code = "import edgecompile.passes, edgecompile.targets, edgecompile.targets.profiles, edgecompile.models.digits"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_bare_passes_and_targets_are_not_importable(tmp_path):
    for name in ("passes", "targets", "models"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name


def test_runtime_load_and_run_import_no_torch(digits_bundle, tmp_path):
    code = (
        "import numpy as np\nfrom edgecompile.runtime import load\n"
        f"r = load({str(digits_bundle.path)!r})\n"
        "y = r(np.zeros((3, 1, 8, 8), np.float32))\nassert y.shape == (3, 10)\n"
    )
    mods = _modules_after(code, tmp_path)
    assert "onnxruntime" in mods
    assert not [m for m in mods if m.split(".")[0] in ("torch", "tvm", "openvino", "tensorrt", "sklearn")]
