"""models/fashion: the IDX reader and the real Fashion-MNIST split (training is cached; the
trained-model check is in the slow test and in bench/real_models.py)."""
import gzip
import struct

import numpy as np
import pytest

from edgecompile.errors import DataError
from edgecompile.models import fashion


def _idx(path, arr, code=0x08):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(
        gzip.compress(
            header + arr.astype(arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype).tobytes()
        )
    )
    return path


def test_read_idx_round_trips_uint8_and_big_endian_int32(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(fashion.read_idx(_idx(tmp_path / "a.gz", a)), a)
    b = np.array([1, -2, 70000], dtype=np.int32)
    assert fashion.read_idx(_idx(tmp_path / "b.gz", b, code=0x0C)).tolist() == [1, -2, 70000]


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "header says"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, raw, match):
    p = tmp_path / "bad.gz"
    p.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=match):
        fashion.read_idx(p)


def test_read_idx_missing_file_names_the_debian_package(tmp_path):
    with pytest.raises(DataError) as err:
        fashion.read_idx(tmp_path / "nope.gz")
    assert "dataset-fashion-mnist" in err.value.hint


def test_real_split_sizes_labels_and_scaling():
    test = fashion.load_split("test")
    cal = fashion.load_split("calibration")
    x = test.inputs["input"]
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and 0.0 == x.min() and x.max() == 1.0
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert len(cal) == fashion.CALIBRATION and cal.labels is not None
    assert len(fashion.load_split("train")) == 60000


@pytest.mark.slow
def test_trained_fashion_cnn_beats_85_percent_on_the_real_test_set():
    from edgecompile.source import resolve_source
    from edgecompile.compiler.training import predict

    src = resolve_source("fashion")
    ds = src.dataset("test")
    acc = float((predict(src.module(), ds)[0].argmax(1) == ds.labels).mean())
    assert acc > 0.85
