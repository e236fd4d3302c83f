"""Self-contained HTML report: each query beside its top predictions, correct ones marked.

Thumbnails are embedded as base64 JPEG so the file opens in any browser with no server.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..data.images import ImageError, load_image
from ..data.safeio import atomic_write

THUMB = 160


def _thumb(path: Path) -> str:
    """Data URI of a small JPEG thumbnail (a grey box if the image cannot be read)."""
    try:
        img = load_image(path)
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except ImageError:
        return ""


def write_report(path: str | Path, title: str, metrics: dict | None, q_root: Path, q_names: list[str],
                 m_root: Path, m_names: list[str], ids: np.ndarray, scores: np.ndarray,
                 positives: list[np.ndarray] | None = None, top: int = 5) -> Path:
    """Write the HTML report and return its path."""
    rows = []
    for qi, q in enumerate(q_names):
        cells = [f'<td class="q"><img src="{_thumb(q_root / q)}"><br>{html.escape(q)}</td>']
        for r, (j, s) in enumerate(zip(ids[qi][:top], scores[qi][:top])):
            ok = positives is not None and j in set(positives[qi].tolist())
            mark = ("ok" if ok else "bad") if positives is not None else "na"
            sym = {"ok": "&#10004;", "bad": "&#10008;", "na": ""}[mark]
            cells.append(f'<td class="{mark}"><img src="{_thumb(m_root / m_names[j])}"><br>'
                         f"#{r + 1} {sym} {html.escape(m_names[j])}<br>{s:.3f}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    summary = ""
    if metrics:
        summary = "<p>" + " &middot; ".join(f"<b>{html.escape(k)}</b> {v:.3f}" if isinstance(v, float)
                                            else f"<b>{html.escape(k)}</b> {v}" for k, v in metrics.items()) + "</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} td{{text-align:center;font-size:11px;padding:4px;vertical-align:top}}
td.q{{background:#eef}} td.ok{{background:#cfc}} td.bad{{background:#fcc}} img{{max-width:{THUMB}px}}</style>
</head><body><h1>{html.escape(title)}</h1>{summary}
<table><tr><th>query</th>{''.join(f'<th>top {i + 1}</th>' for i in range(top))}</tr>
{''.join(rows)}</table></body></html>"""
    path = Path(path)
    atomic_write(path, page)
    return path
