"""Bytes stored per map image for each Patch-NetVLAD preset, ours vs the original's feature files.

`python bench/patchnetvlad_storage.py`. The original writes one float32 .npy per image and patch size
(N_s x num_pcs). Ours is measured: features of the preset's shapes written with the same HDF5 writer the
re-ranker uses (fp16, or uint8 PQ codes for the -pq presets), file size divided by the image count.
Patch counts are for the presets' 640x480 input (VGG: 40 x 30 feature map).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from common import machine

from vprkit.features import h5io, patches
from vprkit.rerank.patchnetvlad import PatchNetVLAD

NPY_HEADER = 128


def main(num_images: int = 20) -> None:
    print(f"machine: {machine()}\n")
    print("| preset | patches | dims | stored as | original MB/image | ours MB/image | smaller |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for preset in PatchNetVLAD.confs:
        conf = PatchNetVLAD.CONFIG.resolve(preset)
        h, w = conf["resize"][1] // 16, conf["resize"][0] // 16
        counts = [len(patches.patch_grid(h, w, s, st, 16)[0]) for s, st in zip(conf["patch_sizes"], conf["strides"])]
        d, pq = conf["num_pcs"], conf["pq_bytes"]
        original = sum(n * d * 4 + NPY_HEADER for n in counts)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "map.h5"
            for i in range(num_images):
                item = {"global": rng.standard_normal(d).astype(np.float16)}
                for size, n in zip(conf["patch_sizes"], counts):
                    item[f"p{size}"] = (rng.integers(0, 256, (n, pq), dtype=np.uint8) if pq
                                        else rng.standard_normal((n, d)).astype(np.float16))
                h5io.write_batch(path, {f"img{i:04d}.jpg": item})
            ours = path.stat().st_size / num_images
        kind = f"PQ {pq} B/patch" if pq else "fp16"
        print(f"| {preset} | {sum(counts)} | {d} | {kind} | {original / 1e6:.2f} | {ours / 1e6:.3f} | "
              f"{original / ours:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
