"""Writing a bench script's results file (bench/results/NAME.txt): the lines as printed, one file per run."""
from __future__ import annotations

import os
from pathlib import Path


def load_average() -> str:
    """The 1/5/15-minute load averages as the results files record them ("0.52 0.61 0.70")."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class Lines(list):
    """A results file's lines: `out(text)` prints the line as it comes and keeps it for write_results."""

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.append(text)


def write_results(path: Path, lines: list[str], *, echo: bool = False) -> str:
    text = "\n".join(lines) + "\n"
    if echo:
        print(text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text


def require(module: str, extra: str = "bench") -> None:
    """Exit with one line when a peer package the bench runs is not installed."""
    import importlib.util
    import sys

    if importlib.util.find_spec(module) is None:
        sys.exit(f"{Path(sys.argv[0]).name} runs {module} as a peer, which is not installed: "
                 f".venv/bin/pip install -e '.[{extra}]'")
