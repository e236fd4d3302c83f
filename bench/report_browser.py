"""Report pages in headless Chromium: file sizes, time to first paint, a screenshot of each.

    python bench/report_browser.py PAGE.html [PAGE.html ...] [--shots docs/img] [--loads 3] [--width 1400]

Prints one row per page: the page, data.js, thumbnails (count, bytes), plots, total bytes, and the median
first-contentful-paint and the time the first page of rows is in the DOM,
over `--loads` fresh browser launches (file://), plus what the page shows first.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from vprkit.evaluation import browser  # noqa: E402
from vprkit.evaluation.report import files_dir  # noqa: E402


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def sizes(page: Path) -> dict:
    files = files_dir(page)
    thumbs = [p for p in (files / "thumbs").rglob("*.jpg")]
    plots = [p for p in files.iterdir() if p.suffix == ".svg"]
    total = page.stat().st_size + sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
    return {"page": page.stat().st_size, "data.js": (files / "data.js").stat().st_size, "thumbs": len(thumbs),
            "thumb_bytes": sum(p.stat().st_size for p in thumbs), "plots": sum(p.stat().st_size for p in plots),
            "total": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pages", nargs="+", type=Path)
    p.add_argument("--shots", type=Path, help="folder for one screenshot per page (report-<name>.png)")
    p.add_argument("--names", nargs="+", help="a short name per page (default: the page's folder name)")
    p.add_argument("--loads", type=int, default=3)
    p.add_argument("--width", type=int, default=1400, help="viewport width (px) of the loads and screenshots")
    args = p.parse_args()
    print(f"machine: {machine()}; browser: {browser.chromium_path()}")
    print("| report | queries | page | data.js | thumbnails | plots | total | first paint | first rows shown "
          "| console errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for page, name in zip(args.pages, args.names or [p.parent.name for p in args.pages], strict=True):
        s = sizes(page)
        runs = []
        for i in range(args.loads):
            shot = args.shots / f"report-{name}.png" if args.shots and i == 0 else None
            runs.append(browser.inspect(page, screenshot=shot, width=args.width))
        fcp = statistics.median(r["first_contentful_paint_ms"] for r in runs)
        rows = statistics.median(r["rows_rendered_ms"] for r in runs)
        errors = sum(len(r["console_errors"]) for r in runs)
        n = runs[0]["page_info"].split("(")[-1].split()[0]
        print(f"| {name} | {n} | {s['page'] / 1e3:.1f} kB | {_mb(s['data.js'])} | "
              f"{s['thumbs']} ({_mb(s['thumb_bytes'])}) | {s['plots'] / 1e3:.0f} kB | {_mb(s['total'])} | "
              f"{fcp:.0f} ms | {rows:.0f} ms | {errors} |")
        first = runs[0]
        print(f"  first rows: {[r['status'] for r in first['rows'][:5]]}, plots visible: "
              f"{sum(p['visible'] and p['width'] > 0 for p in first['plots'])}/{len(first['plots'])}, "
              f"filters: {first['filters']}")
        if first["match_figures"]:
            shown = [f for f in first["match_figures"] if f["visible"]]
            print(f"  match figures on page 1: {len(shown)} of {len(first['match_figures'])} loaded (lazy), the first "
                  f"{first['match_figures'][0]['text']!r}; note: {first['match_note']!r}")


if __name__ == "__main__":
    main()
