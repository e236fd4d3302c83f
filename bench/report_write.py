"""Time to write a results folder's report: with fresh thumbnails, then again reusing them.

    python bench/report_write.py RESULTS_DIR [RESULTS_DIR ...]

RESULTS_DIR is a `vprkit query` folder scored with ground truth (its results.json records the gt). Its
report_files/ is deleted first, then `results.write_results` rewrites predictions, results.json and the report
twice from the saved ranking.
"""

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from vprkit.data.groundtruth import ground_truth_for_kept  # noqa: E402
from vprkit.data.images import list_images  # noqa: E402
from vprkit.results import load_retrieval, write_results  # noqa: E402


def main() -> None:
    print(f"machine: {machine()}")
    for res in map(Path, sys.argv[1:]):
        r = load_retrieval(res)
        info = json.loads((res / "results.json").read_text())
        q_all = list_images(r.query_dir)
        truth = ground_truth_for_kept(info["gt"], q_all, r.q_names, r.m_names, info["threshold"])
        shutil.rmtree(res / "report_files", ignore_errors=True)
        for label in ("fresh thumbnails", "thumbnails reused"):
            t = time.perf_counter()
            write_results(res, r.index_dir, r.query_dir, r.manifest, q_all, r.q_names, r.ids, r.scores,
                          info["top_k"], truth, extra={"gt": info["gt"], "threshold": info["threshold"]})
            print(f"{res}: {len(r.q_names)} queries, results + report written in {time.perf_counter() - t:.1f} s "
                  f"({label})")


if __name__ == "__main__":
    main()
