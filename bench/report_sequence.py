"""The sequence report on the shipped Corridor frames with positions, and screenshots of it in headless Chromium.

    python bench/report_sequence.py OUT [--shots docs/img]

Corridor has no recorded positions: the frames are taken along one straight corridor, so this script gives them
illustrative ones (map frame i at i metres east, query frame i 0.3 m north of it), writes them as positions CSVs
and runs, as a user would:

    vprkit index vprkit/demo_data/corridor/ref -o OUT/idx --preset pixels --positions OUT/map.csv
    vprkit sequence OUT/idx vprkit/demo_data/corridor/query --gt-query OUT/query.csv --threshold 2

then saves the metrics table and the figures of the page (report-sequence-metrics.png, report-sequence-plots.png).
"""

import argparse
import sys
from pathlib import Path

from vprkit.cli import main
from vprkit.evaluation import browser

CORRIDOR = Path(__file__).resolve().parents[1] / "vprkit" / "demo_data" / "corridor"


def positions(out: Path) -> tuple[Path, Path]:
    """map.csv and query.csv: frame i at i m east; queries 0.3 m north of the map line (illustrative)."""
    names = sorted(p.name for p in (CORRIDOR / "ref").iterdir() if p.suffix == ".jpg")
    files = []
    for kind, north in (("map", 0.0), ("query", 0.3)):
        path = out / f"{kind}.csv"
        path.write_text("name,easting,northing\n" + "".join(f"{n},{i:.1f},{north}\n" for i, n in enumerate(names)))
        files.append(path)
    return files[0], files[1]


def shots(page: Path, folder: Path) -> list[Path]:
    """Screenshots of the page's metrics table and figures, as Chromium draws them."""
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser.chromium_path(), args=browser.CHROMIUM_ARGS)
        tab = chromium.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(page.resolve().as_uri(), wait_until="load")
        tab.wait_for_function("() => [...document.querySelectorAll('#plots img')].every(i => i.complete)")
        for part in ("metrics", "plots"):
            saved.append(folder / f"report-sequence-{part}.png")
            tab.locator(f"#{part}").screenshot(path=str(saved[-1]))
        chromium.close()
    return saved


def run(out: Path, folder: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    map_csv, query_csv = positions(out)
    idx = out / "idx"
    if not idx.is_dir():
        assert main(["index", str(CORRIDOR / "ref"), "-o", str(idx), "--preset", "pixels", "--positions",
                     str(map_csv)]) == 0
    res = out / "sequence"
    assert main(["sequence", str(idx), str(CORRIDOR / "query"), "--gt-query", str(query_csv), "--threshold", "2",
                 "-o", str(res)]) == 0
    return shots(res / "report.html", folder)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shots", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    for path in run(args.out, args.shots):
        print(path)
    sys.exit(0)
