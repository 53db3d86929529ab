import pytest

from edgecompile.compiler.config import Config
from edgecompile.errors import ConfigError


def test_defaults_and_contract_tables():
    c = Config.from_dict(
        {
            "model": {"source": "models/digits"},
            "build": {"target": "jetson", "precision": "int8", "strict": True},
            "data": {"calibration": "digits:train[:256]", "evaluation": "digits:test"},
            "passes": {
                "prune": {"ratio": 0.5, "finetune_epochs": 3},
                "quantize": {"mode": "static", "per_channel": True, "calibrate": "entropy", "max_accuracy_drop": 0.5},
            },
            "tvm": {"tune_trials": 64},
            "report": {"formats": ["json", "md", "html"]},
        }
    )
    assert c.build.precision == "int8" and c.passes.quantize.calibrate == "entropy"
    assert c.passes.quantize.max_accuracy_drop == 0.5 and c.tvm.tune_trials == 64
    assert Config().build.target == "cpu" and Config().build.precision is None


@pytest.mark.parametrize("data, needle", [
    ({"build": {"precison": "int8"}}, "unknown config key 'build.precison'"),
    ({"bogus": {}}, "unknown config key 'bogus'"),
    ({"build": {"precision": "int2"}}, "allowed values: fp32, fp16, bf16, int8, int4, auto"),
    ({"build": {"strict": "yes"}}, "'build.strict' must be true or false"),
    ({"passes": {"prune": {"ratio": "half"}}}, "'passes.prune.ratio' must be a number"),
    ({"passes": {"quantize": {"calib_samples": 1.5}}}, "'passes.quantize.calib_samples' must be an integer"),
    ({"report": {"formats": "md"}}, "'report.formats' must be a list of str"),
])
def test_bad_config_names_key_and_allowed(data, needle):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(data)
    assert needle in str(e.value)
    assert e.value.exit_code == 2


def test_flags_override_file(tmp_path):
    p = tmp_path / "edgecompile.toml"
    p.write_text('[build]\ntarget = "rpi5"\nprecision = "int8"\n')
    c = Config.from_file(p).with_overrides({"build.precision": "fp32", "build.backend": None})
    assert (c.build.target, c.build.precision, c.build.backend) == ("rpi5", "fp32", None)


def test_invalid_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[build\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_file(p)


def test_quantize_mode_auto_resolves_from_the_inputs_and_backend():
    from edgecompile.compiler.config import QuantizeSection, resolve_quantize_mode

    assert QuantizeSection().mode == "auto"
    tokens = ["int64", "int64", "int64"]
    assert resolve_quantize_mode("auto", tokens, "ort") == "dynamic"
    assert resolve_quantize_mode("auto", tokens, "auto") == "dynamic"
    assert resolve_quantize_mode("auto", tokens, "tensorrt") == "static"     # QDQ INT8 only
    assert resolve_quantize_mode("auto", ["float32"], "ort") == "static"
    assert resolve_quantize_mode("auto", ["int64", "float32"], "openvino") == "static"
    assert resolve_quantize_mode("auto", [], "ort") == "static"
    assert resolve_quantize_mode("static", tokens, "ort") == "static"        # an explicit mode is kept
