"""TVM tuning start-up (issue 27): the cheap frame records the tensor-intrinsic import runs with are the ones
`inspect.stack()` gives, the import leaves `inspect.stack` as it was, and the search population follows the batch."""
from __future__ import annotations

import inspect
import sys

import pytest

from edgecompile.targets.tvm import startup


def test_frame_records_match_inspect_stack():
    theirs, ours = inspect.stack(), startup.frame_records()      # one line: the same first record
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.frame is b.frame
        assert (a.filename, a.lineno, a.function) == (b.filename, b.lineno, b.function)
        assert (a.code_context, a.index) == (b.code_context, b.index)
    # the one line TVMScript's class check reads: this test's source line
    assert "startup.frame_records()" in ours[0].code_context[0] and ours[0].index == 0


def test_frame_records_of_evaluated_code_have_no_context():
    theirs, ours = [], []
    exec(compile("theirs.append(inspect.stack()[0]); ours.append(startup.frame_records()[0])", "<ast>", "exec"),
         {"inspect": inspect, "startup": startup, "theirs": theirs, "ours": ours})
    assert theirs[0].filename == ours[0].filename == "<ast>"
    assert theirs[0].code_context is None and ours[0].code_context is None
    assert theirs[0].index is None and ours[0].index is None


def test_tensor_intrinsics_import_restores_inspect_stack():
    pytest.importorskip("tvm")
    original = inspect.stack
    startup.import_tensor_intrinsics()
    assert inspect.stack is original
    assert startup.TENSOR_INTRIN in sys.modules
    from tvm.s_tir import TensorIntrin

    assert TensorIntrin.get("dot_16x4_vnni") is not None      # the x86 intrinsics are registered


def test_records_tensorized_only_with_our_intrinsic_do_not_import_tvms(tmp_path):
    """Every tuned FP32 kernel on AVX-512 is tensorized with fma_16x4_f32: a warm rebuild reading such records
    registers that one intrinsic, without the seconds TVM's tensor-intrinsic import costs; records naming one of
    TVM's still import them. In a fresh interpreter (this one may have imported them already)."""
    import subprocess
    import textwrap

    pytest.importorskip("tvm")
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from edgecompile.targets.tvm import records, startup
        from tvm.s_tir import TensorIntrin
        d = Path(sys.argv[1])
        (d / records.RECORDS_FILE).write_text('[0, [[["Tensorize", ["b1"], ["fma_16x4_f32", true], []]], []]]')
        records.intrinsics_for(d)
        assert TensorIntrin.get("fma_16x4_f32") is not None
        assert startup.TENSOR_INTRIN not in sys.modules, "TVM's tensor intrinsics were imported"
        (d / records.RECORDS_FILE).write_text('[0, [[["Tensorize", ["b1"], ["dot_16x4_vnni", true], []]], []]]')
        records.intrinsics_for(d)
        assert startup.TENSOR_INTRIN in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize(("per_iter", "population"), [(4, 64), (8, 128), (32, 512), (64, 512)])
def test_population_follows_the_batch(per_iter, population):
    pytest.importorskip("tvm")
    from tvm.s_tir import meta_schedule as ms

    strategy = startup.search_strategy(ms, per_iter)
    assert int(strategy.population_size) == population
