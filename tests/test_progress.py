"""Progress display: bars on terminals, plain lines in logs; --quiet and --verbose."""
import io
import os
import pty
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli

from edgecompile.progress import Progress


def _slow(n, dt=0.02):
    for i in range(n):
        time.sleep(dt)
        yield i


def test_terminal_gets_a_bar_redrawn_in_place():
    buf = io.StringIO()
    p = Progress(stream=buf, tty=True)
    with p.step("evaluate", "task metric"):
        assert list(p.iterate(_slow(40), 40, "evaluate")) == list(range(40))
    out = buf.getvalue()
    assert out.startswith("  evaluate     task metric ...")
    assert "\r\x1b[2K    evaluate [" in out and "#" * 10 in out and "40/40" in out
    assert "    evaluate 40/40 done in" in out and out.rstrip().endswith("s")
    assert out.count("\n") == 3          # step head, "done" line, step result — the bar itself never scrolls


def test_plain_stream_gets_final_lines_only(monkeypatch):
    monkeypatch.setattr("edgecompile.progress.PLAIN_INTERVAL", 0.1)
    buf = io.StringIO()
    p = Progress(stream=buf)             # StringIO is not a terminal
    with p.step("calibrate"):
        list(p.iterate(_slow(30), 30, "batches"))
    out = buf.getvalue()
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "  calibrate ..." and lines[-1].startswith("  calibrate    ") and lines[-1].endswith(" s")
    assert any(line.startswith("    batches ") and "/30 (" in line for line in lines)
    assert "    batches 30/30 done in" in out


def test_short_loops_stay_silent_and_quiet_keeps_only_warnings():
    buf = io.StringIO()
    p = Progress(stream=buf, tty=True)
    list(p.iterate(range(100), 100, "fast"))
    assert buf.getvalue() == ""
    q = Progress(quiet=True, verbose=True, stream=buf, tty=True)
    with q.step("export"):
        list(q.iterate(_slow(60), 60, "slow"))
    q.info("hello")
    q.debug("detail")
    assert buf.getvalue() == ""
    q.warn("careful")
    assert buf.getvalue() == "WARNING: careful\n" and q.warnings == ["careful"] and "export" in q.timings


def test_verbose_adds_debug_lines_and_warnings_close_an_open_line():
    buf = io.StringIO()
    p = Progress(stream=buf, tty=True, verbose=True)
    with p.step("passes"):
        p.debug("pass simplify: 20 -> 18 nodes")
        p.warn("something")
    lines = buf.getvalue().splitlines()
    assert lines == ["  passes ...", "    · pass simplify: 20 -> 18 nodes", "WARNING: something",
                     lines[3]] and lines[3].startswith("  passes       ")
    buf2 = io.StringIO()
    Progress(stream=buf2).debug("hidden")
    assert buf2.getvalue() == ""


def test_cli_quiet_and_verbose(digits_bundle):
    d = digits_bundle.path
    onnx = d / "model.onnx"
    rc, out, err = run_cli("compare", d, onnx, "-v")                  # -v/-q also after the command name
    assert rc == 0 and "  run A " in err and "    · bisection round 1:" in err
    rc, out_q, err = run_cli("compare", d, onnx, "--quiet")
    assert rc == 0 and err == "" and out_q == out                     # results still on stdout


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="needs a pseudo-terminal")
def test_cli_draws_in_place_on_a_real_terminal(digits_bundle):
    """stderr is a pty: step lines are completed in place (no second line per step)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgecompile", "compare", str(digits_bundle.path),
                             str(digits_bundle.path / "model.onnx")], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, cwd=REPO, env=os.environ.copy())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    err = b"".join(chunks).decode()
    assert proc.returncode == 0 and b"first diverging" not in out
    step_lines = [line for line in err.splitlines() if line.strip().startswith("run A")]
    assert len(step_lines) == 1 and step_lines[0].rstrip().endswith(" s")     # "run A ... 0.12 s" on one line
