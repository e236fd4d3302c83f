"""A few seconds of the service soak (bench/service_soak.py): mixed clients, compactions and a kill -9 + restart
of a real `vprkit serve`; every acknowledged addition must survive and be its own top-1."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import service_soak  # noqa: E402


def test_short_soak_keeps_every_acknowledged_addition(tmp_path):
    report = service_soak.soak(service_soak.build_map(tmp_path), seconds=6, clients=4, kills=1, compact_every=4)
    assert report["ok"], report["violations"]
    assert report["acked_adds"] >= 4  # the map lists the 12 built images, the live additions and those in doubt:
    assert report["live_added"] <= report["listed"] - 12 <= report["live_added"] + report["unsure"]
    assert report["generations_seen"] >= 1 and len(report["restart_s"]) == 2
