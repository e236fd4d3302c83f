"""`vprkit serve`'s settings as a step config (`CONFIG`): limits, answers, streams; `--preset` / `--set` resolve
them as every step's. Kept apart from the service's modules so `vprkit presets` lists them without FastAPI.

The presets pick the streams' sequence localizer (`stream_preset`) together with the line between `localized` and
`lost` (`stream_min_confidence`): each localizer's confidence has its own scale (SeqSLAM: a margin between routes;
the HMM: a posterior probability), so a line is only meaningful with its localizer. Each line was measured on
Corridor with `bench/stream_confidence.py` (docs/service.md).
"""

from __future__ import annotations

from ..config import ConfigError, Presets, require_counts
from ..sequence import pipeline as sequence

DEFAULTS = {
    "top_k": 5, "max_top_k": 100, "max_batch": 16, "batch_wait_ms": 5.0, "max_body_bytes": 20_000_000,
    "max_pixels": 40_000_000, "rate_per_s": 50.0, "rate_burst": 100.0, "timeout_s": 30.0, "body_timeout_s": 10.0,
    "stream_idle_s": 300.0, "max_streams": 1000, "stream_window": 10, "stream_preset": "seqslam-candidates",
    "stream_history": 100, "stream_min_confidence": 0.15,
    "compact_every": 1000, "estimate_temp": 0.05,
    "estimate_radius": 25.0, "prior_depth": 50, "thumb_px": 160, "thumb_cache": 512, "map_points_max": 20000,
    "rerank": {},
    # who may talk to the server (see docs/service.md, "Security and limits"); public_docs None: public without keys
    "allowed_hosts": [], "allowed_origins": [], "public_docs": None,
    # connection limits (slowloris): see `server.guarded_protocol`
    "max_connections": 500, "header_timeout_s": 10.0, "keep_alive_s": 5.0,
}
PRESETS: dict[str, dict] = {
    "seqslam-candidates": {},  # the defaults: SeqSLAM on each frame's global top-K and their route neighbours
    "hmm": {"stream_preset": "hmm", "stream_min_confidence": 0.15},  # HMM forward filtering (a posterior's line)
}


def check(conf: dict) -> dict:
    """Counts of at least one, `public_docs` one of its three values, and a stream localizer that runs online (a
    sequence preset of mode `online`): refused before the server loads anything."""
    if conf["public_docs"] not in (None, "auto", True, False):
        raise ConfigError(f"setting 'public_docs' must be null (or \"auto\"), true or false, got "
                          f"{conf['public_docs']!r}")
    stream = conf["stream_preset"]
    if sequence.CONFIG.presets.get(stream, {}).get("mode") != "online":
        online = sorted(n for n, c in sequence.CONFIG.presets.items() if c["mode"] == "online")
        raise ConfigError(f"stream_preset '{stream}' is not an online sequence preset; choose one of {online}")
    return require_counts(conf, "top_k", "max_top_k", "max_batch", "max_streams", "stream_window", "stream_history",
                          "max_connections")


CONFIG = Presets("serve", DEFAULTS, PRESETS, "seqslam-candidates", open_sections=("rerank",), check=check)
