"""Config ranges (exit 2 naming key and range) and `cache clear` refusing a directory that is not the cache."""
from __future__ import annotations

import pytest
from sechelpers import assert_one_line_error, run_cli

from edgecompile.errors import ConfigError

RANGES = [
    ({"build": {"threads": 0}}, "build.threads", "[1, 4096]"),
    ({"build": {"threads": -2}}, "build.threads", "[1, 4096]"),
    ({"auto": {"rounds": 0}}, "auto.rounds", "[1, 1000]"),
    ({"tvm": {"tune_trials": -1}}, "tvm.tune_trials", "[0, 10000000]"),
    ({"tvm": {"tune_timeout": 0}}, "tvm.tune_timeout", "[0.01, 100000]"),
    ({"openvino": {"num_streams": 0}}, "openvino.num_streams", "[1, 1024]"),
    ({"tensorrt": {"workspace_mb": 0}}, "tensorrt.workspace_mb", "[1, 1048576]"),
    ({"tensorrt": {"optimization_level": 6}}, "tensorrt.optimization_level", "[0, 5]"),
    ({"tensorrt": {"max_batch": 0}}, "tensorrt.max_batch", "[1, 65536]"),
]


@pytest.mark.parametrize("data, key, bounds", RANGES, ids=[r[1] + "=" + str(list(r[0].values())[0]) for r in RANGES])
def test_out_of_range_config_names_key_and_range(data, key, bounds):
    from edgecompile.compiler.config import Config

    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert key in info.value.message and bounds in info.value.message
    assert info.value.exit_code == 2


def test_in_range_values_are_accepted():
    from edgecompile.compiler.config import Config

    cfg = Config.from_dict({"build": {"threads": 2}, "auto": {"rounds": 1}, "tensorrt": {"optimization_level": 0}})
    assert cfg.build.threads == 2


def test_cli_threads_zero_exits_2(tmp_path):
    (tmp_path / "c.toml").write_text("[build]\nthreads = 0\n")
    rc, out, err = run_cli("build", "models/digits", "--config", tmp_path / "c.toml", "-o", tmp_path / "o")
    assert_one_line_error(rc, out, err, codes=(2,), contains="'build.threads' must be in [1, 4096]")
    assert not (tmp_path / "o").exists()


def test_cache_clear_refuses_unmarked_directory(tmp_path):
    victim = tmp_path / "home"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (victim / "models").mkdir()
    rc, out, err = run_cli("cache", "clear", env={"EDGECOMPILE_CACHE": str(victim)})
    assert_one_line_error(rc, out, err, codes=(2,), contains="does not look like EdgeCompile's cache")
    assert (victim / "precious.txt").read_text() == "keep me" and (victim / "models").is_dir()


def test_cache_clear_empties_a_marked_cache(tmp_path):
    from edgecompile.cache import MARKER, mark

    cache = tmp_path / "cache"
    mark(cache)
    (cache / "models").mkdir()
    (cache / "models" / "w.pt").write_bytes(b"x")
    rc, out, err = run_cli("cache", "clear", env={"EDGECOMPILE_CACHE": str(cache)})
    assert rc == 0, err
    assert sorted(p.name for p in cache.iterdir()) == [MARKER]
