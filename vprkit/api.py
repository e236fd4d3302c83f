"""Python API: the same steps as the CLI (`vprkit index`, `vprkit query`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .data.groundtruth import ground_truth_for_kept, utm_or_none
from .data.images import list_images
from .data.safeio import locked
from .features import extract, h5io
from .index import faiss_index, freshness, large
from .index.layout import MAP_FEATURES, QUERY_FEATURES, STATE_FILE
from .index.work import carried, index_work, readable
from .results import check_top_k, gt_record, query_feature_path, results_folder, write_results

logger = logging.getLogger("vprkit")


def index_map(map_dir: str | Path, out_dir: str | Path, preset: str = extract.DEFAULT_PRESET,
              factory: str = faiss_index.DEFAULT_FACTORY, device: str = "cpu", ray: str | None = None,
              workers: int = 2, memory_budget: str | None = None, keep_added: bool = False, **overrides) -> Path:
    """Extract map descriptors and save a searchable index in `out_dir`.

    Features are extracted into a work folder beside `out_dir` (resumable: rerun after a crash and
    finished images are skipped); the index folder appears only when complete. `ray` (an address, 'auto' or
    'local') extracts in shards on a Ray cluster; `memory_budget` ('2GB') picks the index from the map size
    instead of `factory` (compressed, on disk when needed, re-scored exactly; see `index.large`). Rebuilding an
    index that holds images added through the service or `--append` is refused, unless `keep_added` carries
    them over (same model only: their stored descriptors are reused).
    """
    map_dir, out_dir = Path(map_dir).resolve(), Path(out_dir)
    names = list_images(map_dir)
    if preset == extract.AUTO:
        preset, why = extract.auto_preset(map_dir, names)
        logger.warning("--preset auto: %s (%s)", preset, why)
    conf = extract.get_conf(preset, **overrides)
    with index_work(out_dir, keep_added) as work:
        added = carried(out_dir, extract.model_key(conf)) if keep_added else []
        names = readable(_extract_map(conf, map_dir, work, names, device, ray, workers), map_dir, work)
        manifest = {"conf": conf, "model_key": extract.model_key(conf), "map_dir": str(map_dir), "names": names,
                    "positions": utm_or_none(names), "versions": faiss_index.versions()}
        extra = {MAP_FEATURES: work / MAP_FEATURES}
        if (work / STATE_FILE).exists():
            extra[STATE_FILE] = work / STATE_FILE
        if memory_budget is None:
            desc = h5io.read_global(work / MAP_FEATURES, names)
            index = faiss_index.build(desc, factory)
            manifest.update(dim=int(desc.shape[1]), factory=factory)
        else:
            index, files = _build_large(work, names, large.parse_bytes(memory_budget), manifest)
            extra.update(files)
        faiss_index.save(out_dir, index, manifest, extra, added)
    logger.info("indexed %d map images into %s", len(names), out_dir)
    return out_dir


def _extract_map(conf: dict, map_dir: Path, work: Path, names: list[str], device: str, ray: str | None,
                 workers: int) -> list[str]:
    """Map features into work/map_features.h5: in this process, or in shards on Ray (in-process shards when the
    `ray` extra is not installed, with a warning)."""
    if ray is None:
        return extract.main(conf, map_dir, work / MAP_FEATURES, work / STATE_FILE, names=names, device=device)
    from .features import distributed

    return distributed.main(conf, map_dir, work / MAP_FEATURES, work / STATE_FILE, names=names, address=ray,
                            num_workers=workers, device=device)


def _build_large(work: Path, names: list[str], budget: int, manifest: dict) -> tuple:
    """Index chosen from the map size and `budget`, built chunk by chunk from the feature file (bounded memory);
    records the choice, its reason and the recall measured at build time in `manifest`."""
    staging = work / "index"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    dim = h5io.read_global(work / MAP_FEATURES, names[:1]).shape[1]
    choice = large.choose(len(names), dim, budget)
    rng = np.random.default_rng(0)
    n_train = large.train_size(choice, len(names))
    sampled = [names[i] for i in np.sort(rng.choice(len(names), n_train, replace=False))]
    chunks = (h5io.read_global(work / MAP_FEATURES, names[s:s + large.CHUNK]) for s in range(0, len(names),
                                                                                             large.CHUNK))
    # the training sample is passed without a reference kept here, so it is freed once trained
    index = large.build_chunked(chunks, len(names), dim, choice, staging, h5io.read_global(work / MAP_FEATURES,
                                                                                           sampled))
    full = large.descriptors(staging)
    probe = index if index is not None else large.read(staging / faiss_index.INDEX_FILE, True)
    recall = large.expected_recall(probe, full, choice.nprobe) if choice.rescore else 1.0
    manifest.update(dim=int(dim), factory=choice.factory, index=large.manifest_entry(choice, recall))
    logger.info("index: %s (%s); expected R@1 vs exact %.3f", choice.factory, choice.reason, recall)
    files = {large.DESCRIPTORS_FILE: staging / large.DESCRIPTORS_FILE}
    if index is None:
        files.update({faiss_index.INDEX_FILE: staging / faiss_index.INDEX_FILE,
                      large.IVFDATA_FILE: staging / large.IVFDATA_FILE})
    return index, files


def append_map(map_dir: str | Path, index_dir: str | Path, device: str = "cpu", **overrides) -> list[str]:
    """Add the images of `map_dir` that the index lacks (by name), with the index's own model; returns them.

    Each addition is journaled durably (`index.growing`), so a crash keeps what was added and a rerun
    adds the rest; the journal is compacted into the base files at the end.
    """
    from .index.growing import MapWriter, check_name

    map_dir, index_dir = Path(map_dir).resolve(), Path(index_dir)
    writer = MapWriter(index_dir, compact_every=0)
    try:
        conf = {**writer.map.manifest["conf"], **{k: v for k, v in overrides.items() if v is not None}}
        names = [check_name(n) for n in list_images(map_dir) if n not in writer.map.ids]
        if names:
            work = index_dir.with_name(f".{index_dir.name}.append")
            work.mkdir(exist_ok=True)
            state = index_dir / STATE_FILE
            names = extract.main(conf, map_dir, work / MAP_FEATURES, state if state.exists() else None, names=names,
                                 device=device)
            positions = utm_or_none(names) or [None] * len(names)
            for name, desc, pos in zip(names, h5io.read_global(work / MAP_FEATURES, names), positions):
                writer.add(name, desc, (map_dir / name).read_bytes(), pos)
            writer.compact()
            shutil.rmtree(work, ignore_errors=True)
    finally:
        writer.close()
    logger.info("appended %d map images to %s", len(names), index_dir)
    return names


def _check_same_model(index_dir: Path, manifest: dict, preset: str | None) -> dict:
    """The config to describe queries with: the map's own, refusing a conflicting preset."""
    conf = manifest["conf"]
    # the precision is the index's (queries follow it), so --preset only checks the preset's own settings
    wanted = extract.get_conf(preset, precision=conf.get("precision")) if preset is not None else None
    if wanted is not None and extract.model_key(wanted) != manifest["model_key"]:
        raise ValueError(f"{index_dir} was built with preset '{conf['preset']}' "
                         f"({conf['model']['name']} + {conf['aggregator']['name']}); "
                         f"querying it with '{preset}' would compare different descriptor spaces")
    return conf


def localize(index_dir: str | Path, query_dir: str | Path, top_k: int = 20, out_dir: str | Path | None = None,
             gt: str | None = None, threshold: float | None = None, preset: str | None = None,
             device: str = "cpu", report_top: int = 5, nprobe: int | None = None, verify: bool = False) -> dict:
    """Describe queries with the map's model, search the index, write predictions (+ metrics with `gt`).

    Warns when map images changed since indexing: a sample of them is checked, every one with `verify`."""
    index_dir, query_dir = Path(index_dir), Path(query_dir).resolve()
    check_top_k(top_k)
    mi = faiss_index.load(index_dir)
    freshness.warn_if_changed(mi, index_dir, verify)
    conf = _check_same_model(index_dir, mi.manifest, preset)
    out_dir = results_folder(out_dir, index_dir, query_dir)
    state = index_dir / STATE_FILE
    q_all = list_images(query_dir)
    with locked(out_dir), tempfile.TemporaryDirectory() as tmp:
        q_feats = query_feature_path(out_dir, Path(tmp), QUERY_FEATURES, mi.manifest["model_key"])
        q_names = readable(extract.main(conf, query_dir, q_feats, state if state.exists() else None, names=q_all,
                                        device=device), query_dir)
        q_desc = h5io.read_global(q_feats, q_names)
    scores, ids = mi.search(q_desc, top_k, nprobe=nprobe)
    truth = ground_truth_for_kept(gt, q_all, q_names, mi.names, threshold) if gt is not None else None
    return write_results(out_dir, index_dir, query_dir, mi.manifest, q_all, q_names, ids, scores, top_k, truth,
                         report_top, gt_record(gt, threshold))
