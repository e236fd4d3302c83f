"""`vprkit export RESULTS --format hloc|kapture -o OUT`: a retrieval as the files other localization tools read.

hloc: `global-feats.h5` (one group per image name holding a `global_descriptor` dataset, as hloc's
extract_features writes and pairs_from_retrieval reads) and `pairs-from-retrieval.txt` (`query map` per line,
best first). Kapture: `reconstruction/global_features/<preset>/global_features.txt` (name, dtype, dsize,
metric_type) with one raw `<image>.gfeat` per image, and `pairs.txt` (`query_image, map_image, score`).
Images are named `<query folder>/<name>` and `<map folder>/<name>`, so one file holds both without clashes.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .evaluation.outputs import atomic_write, replacing
from .features import h5io
from .index.layout import MAP_FEATURES, QUERY_FEATURES
from .results import Retrieval, load_retrieval, stored_query_descriptors

KAPTURE_HEADER = "# kapture format: 1.1"
FORMATS = ("hloc", "kapture")


def prefixes(r: Retrieval) -> tuple[str, str]:
    """Name prefixes for queries and map images: their folder names (or query/ and map/ when they clash)."""
    q, m = r.query_dir.name, r.map_dir.name
    return ("query/", "map/") if q == m else (f"{q}/", f"{m}/")


def query_descriptors(r: Retrieval) -> np.ndarray:
    """The queries' global descriptors that `vprkit query` kept, refusing features of another model."""
    desc = stored_query_descriptors(r)
    if desc is not None:
        return desc
    raise FileNotFoundError(f"{r.results_dir}: no {QUERY_FEATURES} of this index's model beside the results; "
                            "rerun `vprkit query` into this folder")


def _named(r: Retrieval) -> tuple[list[tuple[list[str], np.ndarray]], list[tuple[str, str, float]]]:
    """(prefixed names, descriptors) of the queries and of the map, and the ranked pairs by those names."""
    qp, mp = prefixes(r)
    q_names, m_names = [qp + n for n in r.q_names], [mp + n for n in r.m_names]
    pairs = [(q_names[qi], m_names[j], float(s)) for qi in range(len(q_names))
             for j, s in zip(r.ids[qi], r.scores[qi]) if j >= 0]
    descs = (query_descriptors(r), h5io.read_global(r.index_dir / MAP_FEATURES, r.m_names))
    return list(zip((q_names, m_names), descs)), pairs


def export_hloc(r: Retrieval, out: Path) -> list[Path]:
    """global-feats.h5 and pairs-from-retrieval.txt in `out`."""
    sets, pairs = _named(r)
    feats = out / "global-feats.h5"
    with replacing(feats) as tmp, h5py.File(tmp, "w") as f:
        for names, desc in sets:
            for name, d in zip(names, desc):
                f.create_group(name).create_dataset("global_descriptor", data=d)
    pairs_path = out / "pairs-from-retrieval.txt"
    atomic_write(pairs_path, "".join(f"{q} {m}\n" for q, m, _ in pairs))
    return [feats, pairs_path]


def export_kapture(r: Retrieval, out: Path) -> list[Path]:
    """Kapture global features (config + one .gfeat per image) and pairs.txt in `out`."""
    sets, pairs = _named(r)
    kind = r.manifest["conf"]["preset"]
    folder = out / "reconstruction" / "global_features" / kind
    for names, desc in sets:
        for name, d in zip(names, desc):
            path = folder / f"{name}.gfeat"
            path.parent.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp:
                d.astype(np.float32).tofile(tmp)
    config = folder / "global_features.txt"
    atomic_write(config, f"{KAPTURE_HEADER}\n# name, dtype, dsize, metric_type\n"
                         f"{kind}, float32, {sets[1][1].shape[1]}, L2\n")
    pairs_path = out / "pairs.txt"
    atomic_write(pairs_path, f"{KAPTURE_HEADER}\n# query_image, map_image, score\n"
                 + "".join(f"{q}, {m}, {s:.6f}\n" for q, m, s in pairs))
    return [config, pairs_path]


def main(results_dir: str | Path, out_dir: str | Path, *, fmt: str) -> Path:
    """Export the retrieval in `results_dir` as `fmt` (hloc, kapture) into `out_dir`, which is returned."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    r = load_retrieval(results_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (export_hloc if fmt == "hloc" else export_kapture)(r, out)
    return out
