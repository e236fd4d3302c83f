"""The revisited Oxford / Paris protocol (Radenovic et al., CVPR 2018): mAP and mP@k at three difficulties.

Every query lists easy, hard and junk database images. Easy counts easy as positive and ignores hard
and junk; medium counts easy and hard and ignores junk; hard counts hard and ignores easy and junk.
Ignored images are removed from the ranking before AP is computed, with the revisitop AP (trapezoid
over recall steps). Ground truth comes as the official gnd_*.pkl (read with an unpickler that only
accepts lists, dicts, numbers, strings and numpy arrays) or as JSON with the same keys.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

SETUPS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
          "hard": (("hard",), ("junk", "easy"))}


def revisited_ap(pos: np.ndarray, num_pos: int) -> float:
    """revisitop's compute_ap: `pos` are the 0-based ranks of the positives (junk removed), sorted."""
    ap = 0.0
    for j, rank in enumerate(pos):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) / (2 * num_pos)
    return ap


def _positions(ranked: np.ndarray, ok: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based ranks of the positives once junk images (and -1 padding) are taken out of the list."""
    kept = ranked[(ranked >= 0) & ~np.isin(ranked, junk)]
    return np.flatnonzero(np.isin(kept, ok))


def evaluate(predictions: np.ndarray, gnd: list[dict], ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """mAP and mP@k per setup for ranked database indices (Q, N); queries without positives are skipped."""
    if len(predictions) != len(gnd):
        raise ValueError(f"{len(predictions)} queries ranked but the ground truth has {len(gnd)}")
    out: dict = {}
    for setup, (ok_keys, junk_keys) in SETUPS.items():
        aps, prs = [], []
        for ranked, g in zip(predictions, gnd):
            ok = np.concatenate([np.asarray(g.get(k, []), dtype=np.int64) for k in ok_keys])
            if not len(ok):
                continue
            junk = np.concatenate([np.asarray(g.get(k, []), dtype=np.int64) for k in junk_keys])
            pos = _positions(np.asarray(ranked), ok, junk)
            aps.append(revisited_ap(pos, len(ok)))
            top = pos + 1
            prs.append([(top <= min(top.max(), k)).sum() / min(top.max(), k) if len(top) else 0.0 for k in ks])
        out[f"mAP_{setup}"] = float(np.mean(aps)) if aps else float("nan")
        for i, k in enumerate(ks):
            out[f"mP@{k}_{setup}"] = float(np.mean([p[i] for p in prs])) if prs else float("nan")
    return out


class _SafeUnpickler(pickle.Unpickler):
    """Only the globals a revisitop gnd file needs: numpy array reconstruction."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a ground-truth file")
        return super().find_class(module, name)


def load_gnd(path: str | Path) -> dict:
    """{'imlist', 'qimlist', 'gnd'} from a revisitop gnd_*.pkl or a JSON file with those keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"revisited ground truth {path} not found")
    try:
        if path.suffix == ".pkl":
            with path.open("rb") as f:
                data = _SafeUnpickler(f, encoding="latin1").load()
        else:
            data = json.loads(path.read_text())
    except (pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a revisited ground-truth file ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a revisited ground-truth file (holds a {type(data).__name__}, expected a "
                         "dict with imlist, qimlist, gnd)")
    missing = {"imlist", "qimlist", "gnd"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    return data


def align(data: dict, q_names: list[str], m_names: list[str], ids: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Predictions over our image names -> (ranked gnd database indices, gnd of each predicted query).

    Images are matched by file stem (revisitop lists names without folder or extension).
    """
    db = {n: i for i, n in enumerate(data["imlist"])}
    qrow = {n: i for i, n in enumerate(data["qimlist"])}
    to_db = np.array([db.get(Path(n).stem, -1) for n in m_names] + [-1], dtype=np.int64)  # -1 stays -1
    missing = [n for n in q_names if Path(n).stem not in qrow]
    if missing:
        raise ValueError(f"{len(missing)} queries are not in the ground truth's qimlist, e.g. {missing[:3]}")
    return to_db[ids], [data["gnd"][qrow[Path(n).stem]] for n in q_names]
