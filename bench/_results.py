"""Writing a bench script's results file (bench/results/NAME.txt): the lines as printed, one file per run."""
from __future__ import annotations

from pathlib import Path


def write_results(path: Path, lines: list[str], *, echo: bool = False) -> str:
    text = "\n".join(lines) + "\n"
    if echo:
        print(text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text
