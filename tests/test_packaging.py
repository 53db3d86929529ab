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


def _pyproject() -> dict:
    import tomllib
    from pathlib import Path

    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_every_package_directory_is_in_the_wheel():
    """A non-editable install (a device, the emulated board) gets only the listed packages."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tool = _pyproject()["tool"]["setuptools"]
    dirs = {pkg: root / path for pkg, path in tool["package-dir"].items()}
    found = set()
    for base in ("edgecompile", "edgecompile.passes", "edgecompile.targets", "edgecompile.models"):
        for init in dirs[base].rglob("__init__.py"):
            rel = init.parent.relative_to(dirs[base]).parts
            if "__pycache__" not in rel:
                found.add(".".join((base, *rel)))
    assert found - set(tool["packages"]) == set()


def test_slim_runtime_extras_pull_no_build_dependencies():
    project = _pyproject()["project"]
    slim = project["dependencies"] + project["optional-dependencies"]["runtime"] + \
        project["optional-dependencies"]["runtime-tvm"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip().lower() for d in slim}
    assert names == {"numpy", "click", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "psutil", "cloudpickle",
                     "tokenizers", "jinja2"}
