"""Single-image vs sequence matching on Nordland dev (winter queries vs summer map, +-2 places).

Descriptors: `pixels` (SeqSLAM's), the default DINOv2 preset, and a NetVLAD trained with `vprkit train` (pass its
checkpoint; docs/sequence.md has the training command). Queries are the winter frames from `--first-query` on
(default 1210: the part of the route the NetVLAD did not train on), the map is all 2000 summer places.
Prints R@1 and recall at 100 % precision (Rec@100P) of single-image matching, online SeqSLAM per ds and the
online HMM (forward filtering, default preset).
Descriptors are cached in --work (resumable).
`python bench/sequence_nordland.py --data ../shared/data --netvlad RUN/best.pt`
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from vprkit.data.groundtruth import from_positions
from vprkit.data.images import list_images
from vprkit.evaluation import metrics
from vprkit.features import extract, h5io
from vprkit.sequence import pipeline

NORDLAND = ("nordland_64x32_dev/summer", "nordland_64x32_dev/winter")


def descriptors(conf: dict, data: Path, work: Path, tag: str, first_query: int) -> tuple[np.ndarray, np.ndarray]:
    """(all map, queries from `first_query` on) descriptors with `conf`, cached in `work`."""
    out = []
    for folder, skip in zip(NORDLAND, (0, first_query)):
        names = list_images(data / folder)[skip:]
        path = work / f"{tag}-{Path(folder).name}.h5"
        extract.main(conf, data / folder, path, work / f"{tag}-aggregator.npz", names=names)
        out.append(h5io.read_global(path, names))
    return out[0], out[1]


def presets(netvlad: str | None) -> dict[str, tuple[str, dict]]:
    """Row name -> (cache tag, extraction config)."""
    confs = {name: (name, extract.CONFIG.resolve(name)) for name in ("pixels", extract.DEFAULT_PRESET)}
    if netvlad:
        model = {"name": "mobilenetv2", "layer": 13, "checkpoint": str(Path(netvlad).resolve())}
        confs["NetVLAD (vprkit train)"] = ("netvlad-trained", extract.CONFIG.resolve(
            "mobilenetv2-netvlad", model=model, preprocessing={"resize_max": 128}))
    return confs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--work", default="bench_sequence_cache", help="descriptor cache folder")
    p.add_argument("--netvlad", help="checkpoint of a NetVLAD trained with `vprkit train` on Nordland dev")
    p.add_argument("--first-query", type=int, default=1210)
    p.add_argument("--ds", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--only", nargs="*", help="rows to run (default all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(machine())
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    for name, (tag, conf) in presets(args.netvlad).items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        m_desc, q_desc = descriptors(conf, data, work, tag, args.first_query)
        truth = from_positions(np.arange(len(q_desc)) + args.first_query, np.arange(len(m_desc)), 2.0)
        sims = q_desc @ m_desc.T
        top = np.argsort(-sims, axis=1)[:, :20]
        rows[f"{name}, single image"] = metrics.evaluate(top, truth, scores=np.take_along_axis(sims, top, 1))
        for ds in args.ds:
            seq_conf = pipeline.CONFIG.resolve("seqslam", ds=ds)
            est, confidence, ids, scores = pipeline.match(seq_conf, q_desc, m_desc)
            res = metrics.evaluate(ids, truth, scores=np.c_[confidence, scores[:, 1:]])
            rows[f"{name}, SeqSLAM online ds={ds}"] = res
        est, confidence, ids, scores = pipeline.match(pipeline.CONFIG.resolve("hmm"), q_desc, m_desc)
        rows[f"{name}, HMM online (filter)"] = metrics.evaluate(ids, truth, scores=np.c_[confidence, scores[:, 1:]])
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"Nordland dev: winter frames from {args.first_query} on vs the 2000 summer places, +-2 places")
    print(metrics.format_table(rows, keys=("R@1", "R@5", "Rec@100P", "Rec@99P", "AUC-PR")))


if __name__ == "__main__":
    main()
