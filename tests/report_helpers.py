"""Read back what a report page loads (its data.js), for assertions on the rows it will show."""

import json
from pathlib import Path


def read_report_data(page: Path) -> dict:
    text = (page.with_name(f"{page.stem}_files") / "data.js").read_text()
    prefix = "window.VPRKIT_REPORT = "
    assert text.startswith(prefix)
    data = json.loads(text[len(prefix):].rstrip().rstrip(";"))
    from vprkit.evaluation.report import MapThumb, QueryRow

    data["queries"] = [QueryRow(*q) for q in data["queries"]]  # the arrays report.js reads, by field name
    data["maps"] = [MapThumb(*m) for m in data["maps"]]
    return data


def synthetic_report(folder: Path, num_queries: int = 120, top: int = 3) -> tuple[Path, "ReportData"]:  # noqa: F821
    """A report over made-up images named with UTM positions: map image j at (10 j, 0), query i at (10 i, 3);
    the positive of query i is map image i. The ranking gets every third query wrong (top-1 = i + 5), the
    baseline every fourth, so some queries are fixed and some broken; the last query has no positive."""
    import numpy as np
    from PIL import Image

    from vprkit.evaluation.report import Ranking, ReportData, write_report

    n = num_queries
    names = {}
    for kind, y in (("q", 3), ("m", 0)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        names[kind] = [f"@{10 * i}@{y}@{kind}{i:05d}.jpg" for i in range(n)]
        for i, name in enumerate(names[kind]):
            Image.new("RGB", (48, 32), ((37 * i) % 256, 90 if kind == "q" else 160, 40)).save(folder / kind / name)

    def ranking(label: str, wrong_every: int, score_shift: float) -> Ranking:
        first = np.arange(n)
        first[::wrong_every] = (first[::wrong_every] + 5) % n
        ids = np.stack([first] + [(first + k) % n for k in range(1, top)], axis=1)
        scores = np.linspace(0.9, 0.1, n)[:, None] + score_shift - 0.01 * np.arange(top)
        return Ranking(label, ids, scores.astype(np.float32), {"R@1": 0.0})

    positives = [np.array([i]) for i in range(n - 1)] + [np.array([], dtype=np.int64)]
    pos = {k: np.array([[10.0 * i, y] for i in range(n)]) for k, y in (("q", 3.0), ("m", 0.0))}
    data = ReportData("synthetic", folder / "q", names["q"], folder / "m", names["m"], ranking("B", 3, 0.0),
                      positives, ranking("A", 4, 0.05), pos["q"], pos["m"], top=top)
    return write_report(folder / "report.html", data), data


def with_match_figures(page: Path, data, limit: int) -> tuple[Path, "ReportData"]:  # noqa: F821
    """`data`'s report again with a match figure for its first `limit` queries in display order, drawn by the
    match-two drawing code from hand-made correspondences: 6 (3 per patch size) for even query indices, none for
    odd ones (so a figure without lines is there to compare with)."""
    from dataclasses import replace

    from PIL import Image

    from vprkit.evaluation.report import MatchFigure, display_order, files_dir, write_report
    from vprkit.rerank.patchnetvlad import draw_matches

    figures = {}
    for qi in display_order(data.ranking.ids, data.ranking.scores, data.positives)[:limit]:
        qi = int(qi)
        pairs = [((4.0 + 6 * k, 4.0 + 4 * k), (40.0 - 5 * k, 28.0 - 4 * k)) for k in range(6 if qi % 2 == 0 else 0)]
        lines = {"2": pairs[:3], "5": pairs[3:]}
        top1 = data.m_names[data.ranking.ids[qi, 0]]
        images = [Image.open(data.q_root / data.q_names[qi]), Image.open(data.m_root / top1)]
        name = f"q{qi}.jpg"
        draw_matches(images, list(lines.values()), files_dir(page) / "matches" / name, scale=4.0)
        figures[qi] = MatchFigure(name, lines)
    data = replace(data, match_figures=figures, match_limit=limit)
    return write_report(page, data), data
