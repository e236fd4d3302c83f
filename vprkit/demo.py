"""`vprkit demo`: index the shipped Corridor map, localize its queries, print recalls, write a report."""

from __future__ import annotations

from pathlib import Path

from . import api
from .evaluation.metrics import format_table
from .features.extract import DEFAULT_PRESET
from .results import read_results

DEMO_DATA = Path(__file__).parent / "demo_data" / "corridor"


def main(out_dir: str | Path = "vprkit_demo", preset: str = DEFAULT_PRESET, device: str = "cpu") -> dict:
    """Run the whole pipeline on Corridor (111 map / 111 query images) and return the results."""
    out_dir = Path(out_dir)
    index_dir = api.index_map(DEMO_DATA / "ref", out_dir / f"index-{preset}", preset=preset, device=device)
    results = api.localize(index_dir, DEMO_DATA / "query", out_dir / f"results-{preset}", top_k=20,
                           gt=str(DEMO_DATA / "positives.txt"), device=device)
    result = read_results(results)
    print(f"\nCorridor ({result['num_map']} map, {result['num_queries']} queries), preset {preset}:")
    print(format_table({preset: result["metrics"]}, keys=("R@1", "R@5", "R@10")))
    print(f"\nreport: {results / 'report.html'}")
    return result
