"""Progress on stderr: one line per pipeline step with its duration, counters for long loops.

Library code receives a Progress (or None) and never prints by itself; `Progress(quiet=True)`
silences everything but warnings. Warnings are also collected for the report.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.quiet = quiet
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def _emit(self, text: str, end: str = "\n") -> None:
        self.stream.write(text + end)
        self.stream.flush()

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        if not self.quiet:
            self._emit(f"  {name:<12} {detail}".rstrip() + " ...", end="" if self._tty else "\n")
        t0 = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            dt = time.perf_counter() - t0
            self.timings[name] = self.timings.get(name, 0.0) + dt
            if not self.quiet:
                status = f"{dt:6.2f} s" if ok else "failed"
                self._emit(f" {status}" if self._tty else f"  {name:<12} {status}")

    def info(self, message: str) -> None:
        if not self.quiet:
            self._emit(message)

    def debug(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self._emit(f"  · {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._emit(f"WARNING: {message}")

    def iterate(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        """Yield items, printing `label i/total` about once a second on long loops."""
        last = time.perf_counter()
        for i, item in enumerate(items, 1):
            yield item
            now = time.perf_counter()
            if not self.quiet and (now - last > 1.0 or i == total) and total > 1:
                self._emit(f"    {label} {i}/{total}")
                last = now


SILENT = Progress(quiet=True)
