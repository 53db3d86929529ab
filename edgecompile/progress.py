"""Progress on stderr: one line per pipeline step with its duration, and progress for long loops.

On a terminal, a step's line is completed in place with its duration and long loops draw a bar
(`label [#####-----] 12/40  3.1 s left`) redrawn at most ten times a second; elsewhere (CI logs,
pipes) every line is plain and final, and loops print `label i/total` about every 5 seconds.

Library code receives a Progress (or None) and never prints by itself. `quiet=True` silences
everything but warnings; `verbose=True` adds `debug` lines (decisions, data, per-pass details).
Warnings are also collected for the report.
"""
from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

PLAIN_INTERVAL = 5.0        # seconds between plain progress lines of one loop
TTY_INTERVAL = 0.1          # seconds between bar redraws


class Progress:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None, tty: bool | None = None):
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.stream = stream or sys.stderr
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}
        self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty()) if tty is None else tty
        self._open = ""             # text of an unfinished line on the terminal ("" if none)
        self._bar = False           # the open line is a redrawable bar

    # -- low level ---------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _line(self, text: str) -> None:
        """A complete line; closes whatever unfinished line is on the terminal first."""
        self._break()
        self._write(text + "\n")

    def _break(self) -> None:
        if self._open:
            self._write("\r\x1b[2K" if self._bar else "\n")
            self._open, self._bar = "", False

    def _width(self) -> int:
        return max(40, min(shutil.get_terminal_size((100, 20)).columns, 160))

    # -- steps -------------------------------------------------------------------------------
    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        head = f"  {name:<12} {detail}".rstrip()
        if not self.quiet:
            if self.tty:
                self._break()
                self._write(head + " ...")
                self._open = head
            else:
                self._line(head + " ...")
        t0 = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            dt = time.perf_counter() - t0
            self.timings[name] = self.timings.get(name, 0.0) + dt
            if not self.quiet:
                status = f"{dt:.2f} s" if ok else "failed"
                if self.tty and self._open == head:
                    self._write(f" {status}\n")
                    self._open = ""
                else:
                    self._line(f"  {name:<12} {status}")

    # -- messages ----------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.quiet:
            self._line(message)

    def debug(self, message: str) -> None:
        if self.verbose:
            self._line(f"    · {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._line(f"WARNING: {message}")

    # -- loops -------------------------------------------------------------------------------
    def iterate(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        """Yield items while showing progress: a bar on terminals, a line every few seconds elsewhere.
        Loops shorter than about a second stay silent."""
        start = last = time.perf_counter()
        shown = False
        i = 0
        for i, item in enumerate(items, 1):
            yield item
            if self.quiet or total <= 1:
                continue
            now = time.perf_counter()
            if self.tty:
                if (now - start > 0.5 or shown) and (now - last >= TTY_INTERVAL or i == total):
                    self._draw_bar(label, i, total, now - start)
                    shown, last = True, now
            elif now - last >= PLAIN_INTERVAL and i < total:
                self._line(f"    {label} {i}/{total} ({now - start:.0f} s)")
                shown, last = True, now
        if shown and not self.quiet:
            dt = time.perf_counter() - start
            if self.tty:
                self._break()
            self._line(f"    {label} {i}/{total} done in {dt:.1f} s")

    def _draw_bar(self, label: str, i: int, total: int, elapsed: float) -> None:
        frac = min(i / total, 1.0)
        eta = elapsed / i * (total - i) if i else 0.0
        tail = f" {i}/{total}  {eta:.1f} s left" if i < total else f" {i}/{total}"
        room = self._width() - len(label) - len(tail) - 10
        n = max(10, min(40, room))
        filled = int(round(frac * n))
        text = f"    {label} [{'#' * filled}{'-' * (n - filled)}]{tail}"
        if self._open and not self._bar:       # a step line is open: the bar goes below it
            self._write("\n")
        self._write("\r\x1b[2K" + text)
        self._open, self._bar = text, True


SILENT = Progress(quiet=True)
