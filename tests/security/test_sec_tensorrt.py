"""The TensorRT engine cache on the device: one build under concurrent first loads, and a cached engine used
only when its recorded hash matches (plain file logic: no engine involved). The runner itself (profile
checks, chunking above the profile's max batch) is written against TensorRT's API and exercised only by
the end-to-end tests in tests/targets/test_tensorrt.py, which skip without TensorRT and an NVIDIA GPU."""
from __future__ import annotations




def test_engine_cache_builds_once_under_concurrency_and_rejects_tampered_engines(tmp_path):
    import threading

    from edgecompile.targets.tensorrt.enginecache import get_or_build

    path = tmp_path / "10.1-sm87-abc.engine"
    builds = []
    gate = threading.Barrier(6)

    def build() -> bytes:
        builds.append(1)
        return b"engine-bytes"

    results = []

    def load():
        gate.wait()
        results.append(get_or_build(path, build))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(builds) == 1 and sorted(o for _, o in results) == ["built"] + ["cached"] * 5
    assert all(data == b"engine-bytes" for data, _ in results)
    assert not list(tmp_path.glob("*.part"))
    path.write_bytes(b"evil engine")                     # not what the record says: never deserialized
    data, origin = get_or_build(path, build)
    assert (data, origin) == (b"engine-bytes", "built") and len(builds) == 2
    (tmp_path / (path.name + ".json")).unlink()           # no record: rebuilt too
    assert get_or_build(path, build)[1] == "built"
