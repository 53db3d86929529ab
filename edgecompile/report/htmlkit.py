"""Small HTML helpers shared by the report's renderers: escaping, tables, axis ticks."""
from __future__ import annotations

import html
import math


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def cell(v) -> str:
    if isinstance(v, bool):
        return f"<td>{'yes' if v else 'no'}</td>"
    if isinstance(v, float):
        return f'<td class="num">{esc(f"{v:.4g}")}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    if isinstance(v, (list, tuple)):
        return f"<td>{esc(', '.join(map(str, v)))}</td>"
    if isinstance(v, dict):
        return f"<td>{esc('; '.join(f'{k}: {x}' for k, x in v.items()))}</td>"
    return f"<td>{esc('' if v is None else v)}</td>"


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]
