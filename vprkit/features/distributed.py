"""Feature extraction on a Ray cluster: shards of the image list, one model per actor, per-shard HDF5.

The driver fits the aggregator (vocabulary / PCA) once on a sample of the map, exactly as `extract.main`
does, and saves it; each Ray actor loads the model once and that state, then extracts whole shards with
`extract.main` into `<features>_shards/shard-NNNNN.h5`. A shard is finished when its `.done` file (its image list and
failures) is there, so a re-run, a killed worker or a restarted job redoes only unfinished shards (and
resumes inside one, since `extract.main` skips finished images). Shards merge into the usual
`map_features.h5`, so everything downstream (index, query, re-rankers) is unchanged.

Ray is an optional extra (`pip install vprkit[ray]`); without it `main` runs the same shards in this process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..data.images import list_images
from . import extract, h5io

logger = logging.getLogger("vprkit")
DEFAULT_SHARD_SIZE = 256


def shard_lists(names: list[str], shard_size: int) -> list[list[str]]:
    """Consecutive slices of the sorted image list (deterministic, so a re-run finds the same shards)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [names[i:i + shard_size] for i in range(0, len(names), shard_size)]


def _done_path(shard_dir: Path, i: int) -> Path:
    return shard_dir / f"shard-{i:05d}.done"


def _h5_path(shard_dir: Path, i: int) -> Path:
    return shard_dir / f"shard-{i:05d}.h5"


def shard_done(shard_dir: Path, i: int, names: list[str]) -> bool:
    """True when shard i was finished for exactly these names (another image list means redo it)."""
    path = _done_path(shard_dir, i)
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text())["names"] == names
    except (ValueError, KeyError):
        return False


def extract_shard(conf: dict, image_dir: Path, shard_dir: Path, state_path: Path, i: int, names: list[str],
                  extractor: extract.Extractor) -> int:
    """Extract one shard (resuming inside it) and mark it done; returns how many images succeeded.

    A shard file left unreadable by a killed worker is ours, not the user's: it is discarded and redone.
    """
    h5 = _h5_path(shard_dir, i)
    try:
        h5io.finished_names(h5)
    except OSError:
        logger.warning("shard %d: %s is unreadable (a worker died while writing it); redoing the shard", i, h5)
        h5.unlink()
    start = time.time()
    ok = extract.main(conf, image_dir, h5, state_path, names=names, extractor=extractor)
    failed = sorted(set(names) - set(ok))
    tmp = _done_path(shard_dir, i).with_suffix(".done.tmp")
    # when and where it ran: lets an operator (and bench/ray_extract.py) separate start-up from extraction
    tmp.write_text(json.dumps({"names": names, "failed": failed, "started": start, "seconds": time.time() - start,
                               "pid": os.getpid()}))
    os.replace(tmp, _done_path(shard_dir, i))
    return len(ok)


class ShardWorker:
    """A Ray actor (or an in-process worker): loads the model and the fitted state once, extracts shards.

    `threads`: torch's thread count in this process (the CPUs Ray gave the actor). Ray sets OMP_NUM_THREADS only
    where it is unset, so a variable inherited from the driver's shell (OMP_NUM_THREADS=2 on a 2-core machine)
    would otherwise give every actor that many threads and oversubscribe the cores."""

    def __init__(self, conf: dict, image_dir: str, shard_dir: str, state_path: str, device: str = "cpu",
                 pid_dir: str | None = None, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.conf, self.image_dir, self.shard_dir = conf, Path(image_dir), Path(shard_dir)
        self.state_path = Path(state_path)
        self.extractor = extract.Extractor(conf, device)
        if self.extractor.aggregator.needs_fit:
            self.extractor.load_state(self.state_path)
        if pid_dir is not None:  # lets tests and operators see (and kill) worker processes
            Path(pid_dir, f"{os.getpid()}.pid").write_text(str(os.getpid()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [extract_shard(self.conf, self.image_dir, self.shard_dir, self.state_path, int(i), json.loads(names),
                              self.extractor) for i, names in zip(batch["shard"], batch["names"])]
        return {"shard": np.asarray(batch["shard"]), "ok": np.asarray(done)}


def connect(address: str, num_workers: int) -> None:
    """Join a Ray cluster: 'auto' joins a running one or starts a local one; 'local' always starts one."""
    import ray

    if ray.is_initialized():
        return
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
            return
        except ConnectionError:
            logger.info("no running Ray cluster found; starting a local one with %d workers", num_workers)
    if address in ("auto", "local"):
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address, log_to_driver=False)


def run_shards_on_ray(conf: dict, image_dir: Path, shard_dir: Path, state_path: Path, shards: list[list[str]],
                      todo: list[int], address: str, num_workers: int, device: str, pid_dir: str | None) -> None:
    """Ray Data `map_batches` over shard ids with an actor pool; dead actors restart and retry their shard (Ray
    Data's default for actor pools since 2.60: `max_restarts=-1`, `max_task_retries=-1`; shards are idempotent).

    Each actor gets the cluster's CPUs divided by the workers (and as many torch threads); a shard goes to an idle
    actor only (one in flight per actor), so an actor that started early does not queue shards a later one could
    take."""
    import ray

    connect(address, num_workers)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress bar says how far it is
    resources = ray.cluster_resources()
    gpus = 1 if device.startswith("cuda") and resources.get("GPU", 0) >= 1 else 0
    cpus = max(1, int(resources.get("CPU", num_workers)) // num_workers)
    rows = [{"shard": i, "names": json.dumps(shards[i])} for i in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    pool = ray.data.ActorPoolStrategy(size=num_workers, max_tasks_in_flight_per_actor=1)
    ds = ds.map_batches(ShardWorker, batch_size=1, compute=pool, num_cpus=cpus, num_gpus=gpus,
                        fn_constructor_kwargs={"conf": conf, "image_dir": str(image_dir), "shard_dir": str(shard_dir),
                                               "state_path": str(state_path), "device": device, "pid_dir": pid_dir,
                                               "threads": cpus})
    for row in tqdm(ds.iter_rows(), total=len(todo), desc="extract shards (ray)", unit="shard"):
        logger.debug("shard %d: %d images", row["shard"], row["ok"])


def merge_shards(shard_dir: Path, shards: list[list[str]], feature_path: Path, key: str) -> list[str]:
    """Copy every shard's features into one HDF5 file (shard by shard: memory bounded by one shard)."""
    ok: list[str] = []
    for i, names in enumerate(tqdm(shards, desc="merge shards", unit="shard")):
        failed = set(json.loads(_done_path(shard_dir, i).read_text())["failed"])
        good = [n for n in names if n not in failed]
        with h5py.File(_h5_path(shard_dir, i), "r") as f:
            items = {n: {k: f[n][k][()] for k in f[n]} for n in good}
        h5io.write_batch(feature_path, items, {"model_key": key})
        ok += good
    return ok


def main(conf: dict, image_dir: str | Path, feature_path: str | Path, state_path: str | Path,
         names: list[str] | None = None, address: str | None = "auto", num_workers: int = 2,
         shard_size: int = DEFAULT_SHARD_SIZE, device: str = "cpu", pid_dir: str | None = None) -> list[str]:
    """Write global descriptors of `image_dir` to `feature_path` shard by shard; returns the names that succeeded.

    `address` is a Ray address ('auto', 'local', 'ray://host:10001', 'host:6379'), or None to run the shards in
    this process (same files, same result).
    """
    image_dir, feature_path, state_path = Path(image_dir), Path(feature_path), Path(state_path)
    names = names if names is not None else list_images(image_dir)
    if address is not None and importlib.util.find_spec("ray") is None:
        logger.warning("the ray package is not installed (pip install 'vprkit[ray]'); extracting the same shards in "
                       "this process")
        address = None
    shard_dir = feature_path.with_name(feature_path.stem + "_shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = shard_lists(names, shard_size)
    ext = extract.Extractor(conf, device)
    if ext.aggregator.needs_fit and not state_path.exists():
        ext.fit(image_dir, names)
        ext.save_state(state_path)
    todo = [i for i, s in enumerate(shards) if not shard_done(shard_dir, i, s)]
    logger.info("%d of %d shards to extract (%d images per shard)", len(todo), len(shards), shard_size)
    if todo and address is not None:
        del ext  # the actors load their own model
        run_shards_on_ray(conf, image_dir, shard_dir, state_path, shards, todo, address, num_workers, device, pid_dir)
    elif todo:
        if ext.aggregator.needs_fit:
            ext.load_state(state_path)
        for i in tqdm(todo, desc="extract shards", unit="shard"):
            extract_shard(conf, image_dir, shard_dir, state_path, i, shards[i], ext)
    missing = [i for i, s in enumerate(shards) if not shard_done(shard_dir, i, s)]
    if missing:
        raise RuntimeError(f"{len(missing)} shards did not finish (e.g. {_h5_path(shard_dir, missing[0])}); "
                           "rerun the same command to resume them")
    feature_path.unlink(missing_ok=True)  # rebuilt from the shards, which are the resumable record
    ok = merge_shards(shard_dir, shards, feature_path, extract.model_key(conf))
    return extract.succeeded(names, sorted(set(names) - set(ok)), len(names))
