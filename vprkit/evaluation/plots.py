"""Report figures drawn with matplotlib (Agg, no display), saved as SVG beside the report.

Large point sets are rasterised inside the SVG so a 100k-query map stays a small file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .outputs import replacing

RASTER_ABOVE = 2000  # points / lines drawn as one embedded bitmap beyond this many


def _figure(xlabel: str, ylabel: str, title: str, size=(4.6, 3.4)):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (the suffix of `path` picks the format) and free it."""
    from matplotlib import pyplot as plt

    fig.tight_layout()
    with replacing(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format=path.suffix[1:], metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return path


def recall_curves(path: Path, curves: dict[str, np.ndarray]) -> Path:
    """Recall@N against N (N = 1..len) for each labelled curve."""
    fig, ax = _figure("N (predictions considered)", "Recall@N", "Recall@N")
    for label, rec in curves.items():
        ax.plot(np.arange(1, len(rec) + 1), rec, marker="o" if len(rec) <= 25 else None, ms=3, label=label)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float, float]],
              what: str = "top-1 score as confidence") -> Path:
    """Precision against recall, each curve labelled with its AUC and its recall at 100 % precision; `what` names
    the confidence thresholded."""
    fig, ax = _figure("recall", "precision", f"Precision-recall ({what})")
    for label, (precision, recall, auc, r100) in curves.items():
        start = precision[:1] if len(precision) else [1.0]  # the curve starts at recall 0, as auc_pr's area does
        ax.plot(np.r_[0.0, recall], np.r_[start, precision], label=f"{label}\nAUC {auc:.3f}, R@100%P {r100:.3f}")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


def score_histogram(path: Path, scores: np.ndarray, correct: np.ndarray, what: str = "top-1 score") -> Path:
    """Distribution of top-1 scores (or another confidence, named by `what`) for correct vs wrong top-1 (queries
    with a positive only)."""
    fig, ax = _figure(what, "queries", f"{what.capitalize()}: right vs wrong")
    lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
    bins = np.linspace(lo, max(hi, lo + 1e-6), 31)  # equal scores still get one finite bin
    ax.hist(scores[correct], bins=bins, alpha=0.6, color="tab:green", label=f"right ({int(correct.sum())})")
    ax.hist(scores[~correct], bins=bins, alpha=0.6, color="tab:red", label=f"wrong ({int((~correct).sum())})")
    ax.legend(fontsize=8)
    return _save(fig, path)


MAX_STRETCH = 40.0  # a route's narrow axis is stretched at most this much
READABLE_RATIO = 4.0  # an equal-aspect map taller or wider than this many times its other side is stretched


def readable_stretch(points: np.ndarray) -> float:
    """How much to stretch the north axis of a map of `points` so neither side is more than READABLE_RATIO times
    the other: 1 (equal aspect, true shapes) unless the route is long and thin, where equal aspect draws a straight
    route as a line and hides every error along it."""
    span = np.ptp(points, axis=0) if len(points) else np.zeros(2)
    if span[1] <= 0 or span[0] <= 0:
        return 1.0
    return float(np.clip(span[0] / (READABLE_RATIO * span[1]), 1.0, MAX_STRETCH))


def position_map(path: Path, m_pos: np.ndarray, q_pos: np.ndarray, pred_pos: np.ndarray,
                 correct: np.ndarray | None, track: bool = False) -> float:
    """Map points, queries and each query's top-1 position, joined by an error line (red when wrong); `track` draws
    the queries as one line in their order (a sequence). Equal aspect, except that a long thin route's north axis
    is stretched (see `readable_stretch`; the axis label says by how much). Returns the stretch."""
    from matplotlib.collections import LineCollection

    stretch = readable_stretch(np.concatenate([m_pos, q_pos]))
    north = f"north (m), stretched x{stretch:.3g}" if stretch > 1 else "north (m)"
    fig, ax = _figure("east (m)", north, "Queries and their top-1 positions", size=(6, 5))
    raster = len(q_pos) + len(m_pos) > RASTER_ABOVE
    ax.scatter(m_pos[:, 0], m_pos[:, 1], s=4, c="0.7", label="map", rasterized=raster)
    ok = np.ones(len(q_pos), bool) if correct is None else correct
    colours = np.where(ok[:, None], [[0.2, 0.6, 0.2, 0.6]], [[0.85, 0.1, 0.1, 0.8]])
    ax.add_collection(LineCollection(np.stack([q_pos, pred_pos], axis=1), colors=colours, linewidths=0.8,
                                     rasterized=raster))
    if track:
        ax.plot(q_pos[:, 0], q_pos[:, 1], "-", c="tab:blue", lw=1.2, label="query track", rasterized=raster)
    ax.scatter(q_pos[:, 0], q_pos[:, 1], s=8, c="tab:blue", label=None if track else "query", rasterized=raster)
    ax.scatter(pred_pos[:, 0], pred_pos[:, 1], s=8, marker="x", c="k", label="top-1", rasterized=raster)
    ax.set_aspect(stretch, adjustable="datalim")  # a metre north is drawn `stretch` times a metre east
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)
    return stretch


def route_matches(path: Path, matched: np.ndarray, positive: np.ndarray, correct: np.ndarray,
                  has_pos: np.ndarray) -> Path:
    """Query frame (stream order) against the matched place (route order), SeqSLAM's picture: a route followed is
    a diagonal. The nearest positive place is drawn grey, right matches green, wrong ones red crosses."""
    fig, ax = _figure("query frame", "place along the route", "Matched place per frame", size=(6, 4))
    frames = np.arange(len(matched))
    gt = positive >= 0
    ax.scatter(frames[gt], positive[gt], s=14, c="0.75", label="nearest positive")
    ok, bad = correct & (matched >= 0), ~correct & (matched >= 0)
    ax.scatter(frames[ok], matched[ok], s=8, c="tab:green", label=f"right ({int(ok.sum())})")
    ax.scatter(frames[bad], matched[bad], s=16, marker="x", c="tab:red",
               label=f"wrong ({int(bad.sum())}, {int((bad & ~has_pos).sum())} without a positive)")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)
