"""Golden outputs of the vprkit steps on a small Corridor subset, made with the code before the redesign.

Run with the old code first on the path (see SOURCE.md); `tests/test_same_outputs.py` runs the same `STEPS` with
the current code and compares. Every step gets an explicit `-o`, so default folder names do not matter.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AMES_CHECKPOINT = HERE / "ames-tiny.pt"  # a tiny random AMES in the authors' layout (no trained weights needed)
GCSA_CHECKPOINT = HERE / "gcsa-tiny.pt"  # a tiny random GCSA (no side information) in vprkit's checkpoint layout
CORRIDOR = Path(__file__).resolve().parents[3] / "vprkit" / "demo_data" / "corridor"
MAP_NAMES = [f"{i:07d}.jpg" for i in range(16)]
QUERY_NAMES = [f"{i:07d}.jpg" for i in range(0, 16, 3)]
TOP_K = 5
DECIMALS = 5

# (name, argv): `{root}` is the work folder; steps run in this order (re-rankers and sequence read the query results)
STEPS = [
    ("index", ["index", "{root}/map", "-o", "{root}/index", "--preset", "dinov2-vlad"]),
    ("query", ["query", "{root}/index", "{root}/query", "--top-k", str(TOP_K), "-o", "{root}/query-results"]),
    ("chamfer", ["rerank", "{root}/query-results", "--method", "chamfer", "--preset", "dinov2", "--num-rerank", "3",
                 "--match-figures", "0", "-o", "{root}/chamfer"]),
    ("patchnetvlad", ["rerank", "{root}/query-results", "--method", "patchnetvlad", "--preset", "speed",
                      "--num-rerank", "3", "--match-figures", "0", "--set", "resize=[160,120]", "fit_max_images=8",
                      "fit_max_patches=1000", "num_pcs=32", "-o", "{root}/patchnetvlad"]),
    ("segvlad", ["rerank", "{root}/query-results", "--method", "segvlad", "--preset", "slic", "--num-rerank", "3",
                 "--match-figures", "0", "--set", "pca_fit_images=8", "-o", "{root}/segvlad"]),
    ("ames", ["rerank", "{root}/query-results", "--method", "ames", "--preset", "fp", "--num-rerank", "3",
              "--match-figures", "0", "--set", f"authors_checkpoint={AMES_CHECKPOINT}", "num_query_desc=50",
              "num_map_desc=50", "-o", "{root}/ames"]),
    ("gcsa", ["rerank", "{root}/query-results", "--method", "gcsa", "--num-rerank", "3", "--match-figures", "0",
              "--set", f"checkpoint={GCSA_CHECKPOINT}", "-o", "{root}/gcsa"]),
    ("seqslam", ["sequence", "{root}/query-results", "--method", "seqslam", "--set", "ds=4", "-o",
                 "{root}/seqslam"]),
    ("hmm", ["sequence", "{root}/query-results", "--method", "hmm", "-o", "{root}/hmm"]),
]


def make_ames_checkpoint(input_dim: int = 384) -> None:
    """A seeded tiny AMES (DINOv2 ViT-S local descriptors are 384-d) saved as the authors save theirs."""
    import torch

    from vprkit.models.ames import AMES

    torch.manual_seed(0)
    model = AMES(input_dim=input_dim, model_dim=8, num_layers=1, ff_dim=16)
    torch.save({"state": model.state_dict()}, AMES_CHECKPOINT)


def make_gcsa_checkpoint(desc_dim: int = 64 * 384) -> None:
    """A seeded tiny GCSA on dinov2-vlad descriptors (64 clusters x 384), saved as `vprkit train gcsa` saves one."""
    import torch

    from vprkit.models.gcsa import GCSA
    from vprkit.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = GCSA(desc_dim, 3, [], proj_dim=8, width=16, num_layers=1, num_heads=2)
    save_checkpoint(GCSA_CHECKPOINT, model, model_config=model.config(), conf={})


def make_subset(root: Path) -> None:
    """Copy the map and query images of the subset into root/map and root/query."""
    for folder, names, sub in (("ref", MAP_NAMES, "map"), ("query", QUERY_NAMES, "query")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(CORRIDOR / folder / name, root / sub / name)


def argv(step: list[str], root: Path) -> list[str]:
    return [a.replace("{root}", str(root)) for a in step]


def read_ranking(folder: Path) -> dict[str, list[list]]:
    """predictions.txt as {query: [[map image, score rounded], ...]} best first."""
    out: dict[str, list[list]] = {}
    for line in (folder / "predictions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            query, _, name, score = line.split("\t")
            out.setdefault(query, []).append([name, round(float(score), DECIMALS)])
    return out


def read_estimates(folder: Path) -> dict[str, list]:
    """sequence.txt as {query: [estimate, confidence rounded]} (whitespace-split: the old file used spaces)."""
    out = {}
    for line in (folder / "sequence.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            query, estimate, confidence = line.split()
            out[query] = [estimate, round(float(confidence), DECIMALS)]
    return out


def run_step(name: str, root: Path) -> dict:
    """Run one step with whichever vprkit is importable; its outputs as recorded in the golden files."""
    from vprkit.cli import main

    step = dict(STEPS)[name]
    assert main(argv(step, root)) in (0, None), name
    if name == "index":
        return {}
    out = {"ranking": read_ranking(root / name if name != "query" else root / "query-results")}
    if name in ("seqslam", "hmm"):
        out["estimates"] = read_estimates(root / name)
    return out


def main(out_dir: str) -> None:
    import tempfile

    make_ames_checkpoint()
    make_gcsa_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_subset(root)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name, _ in STEPS:
            start = time.perf_counter()
            record = run_step(name, root)
            print(f"{name}: {time.perf_counter() - start:.1f} s")
            if record:
                path = Path(out_dir) / f"{name}.json"
                path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
                print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1])
