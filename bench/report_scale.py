"""The report at scale: write and open a report of N synthetic queries (default 100,000).

    python bench/report_scale.py [--queries 100000] [--out /tmp/report_scale]

Query and map files are symlinks to eight real images, so only eight thumbnails are made (thumbnail cost is
linear and measured on real data in docs/report.md), but data.js, the per-query rows and the plots (map with
100k error lines on a figure-eight route) are full size. Prints the machine, seconds to write, file sizes,
and in headless Chromium the first paint and the time the first page of rows is in the DOM.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from vprkit.evaluation import browser  # noqa: E402
from vprkit.evaluation.report import Ranking, ReportData, files_dir, write_report  # noqa: E402


def _folder(root: Path, kind: str, n: int) -> list[str]:
    """n symlinks to eight small images."""
    (root / kind).mkdir(parents=True, exist_ok=True)
    for c in range(8):
        Image.new("RGB", (64, 32), (30 * c, 100, 200 - 20 * c)).save(root / f"{kind}-src{c}.jpg")
    names = [f"{kind}{i:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        link = root / kind / name
        if not link.is_symlink():
            link.symlink_to(root / f"{kind}-src{i % 8}.jpg")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=Path("/tmp/report_scale"))
    args = p.parse_args()
    n, rng = args.queries, np.random.default_rng(0)
    q_names, m_names = _folder(args.out, "q", n), _folder(args.out, "m", n)
    ids = (np.arange(n)[:, None] + rng.integers(-3, 40, size=(n, 5))) % n  # about 1 in 10 right at top-1
    scores = np.sort(rng.random((n, 5)), axis=1)[:, ::-1].astype(np.float32)
    positives = [np.arange(max(i - 2, 0), min(i + 3, n)) for i in range(n)]
    t = 2 * np.pi * np.arange(n) / n  # a figure-eight route, queries 5 m off the map's path
    pos_m = np.stack([400 * np.sin(t), 200 * np.sin(2 * t)], 1)
    pos_q = pos_m + 5.0
    data = ReportData(f"{n} synthetic queries", args.out / "q", q_names, args.out / "m", m_names,
                      Ranking("synthetic", ids, scores), positives, None, pos_q, pos_m)
    t = time.perf_counter()
    page = write_report(args.out / "report.html", data)
    written = time.perf_counter() - t
    files = files_dir(page)
    print(f"machine: {machine()}")
    print(f"{n} queries: report written in {written:.1f} s; data.js {(files / 'data.js').stat().st_size / 1e6:.1f} MB, "
          f"plots {sum(f.stat().st_size for f in files.glob('*.svg')) / 1e3:.0f} kB, "
          f"thumbnails {len(list((files / 'thumbs').rglob('*.jpg')))}")
    seen = browser.inspect(page, click="right")
    print(f"chromium: first paint {seen['first_contentful_paint_ms']:.0f} ms, first rows in the DOM "
          f"{seen['rows_rendered_ms']:.0f} ms, console errors {len(seen['console_errors'])}, "
          f"rows shown {len(seen['rows'])}, {seen['page_info'].strip()}; filter 'right': "
          f"{seen['filtered_page_info'].strip()}")


if __name__ == "__main__":
    main()
