"""`--preset auto`: the preset follows the map's image size; the default is the one chosen across datasets."""

import logging

from PIL import Image

from vprkit import api
from vprkit.features import extract


def _folder(tmp_path, size, n=6):
    for i in range(n):
        Image.new("RGB", size, (i * 40, 90, 160)).save(tmp_path / f"{i:02d}.png")
    return tmp_path


def test_auto_picks_pixels_for_thumbnails_and_the_default_otherwise(tmp_path):
    small = _folder(tmp_path / "small" if (tmp_path / "small").mkdir() is None else tmp_path, (64, 32))
    preset, why = extract.auto_preset(small, sorted(p.name for p in small.iterdir()))
    assert preset == "pixels" and "32 px" in why
    (tmp_path / "big").mkdir()
    big = _folder(tmp_path / "big", (160, 120))
    preset, why = extract.auto_preset(big, sorted(p.name for p in big.iterdir()))
    assert preset == extract.DEFAULT_PRESET and "120 px" in why


def test_index_with_auto_records_the_chosen_preset_and_logs_why(tmp_path, caplog):
    maps = _folder(tmp_path / "map" if (tmp_path / "map").mkdir() is None else tmp_path, (64, 32))
    with caplog.at_level(logging.WARNING, logger="vprkit"):
        idx = api.index_map(maps, tmp_path / "idx", preset="auto")
    assert "--preset auto: pixels" in caplog.text
    from vprkit.index import faiss_index

    assert faiss_index.load(idx).manifest["conf"]["preset"] == "pixels"


def test_default_is_the_mean_rank_winner_of_bench_select_defaults():
    conf = extract.CONFIG.resolve(extract.DEFAULT_PRESET)
    assert conf["model"] == {"name": "dinov2_vits14", "layer": 8, "facet": "value"}
    assert conf["aggregator"]["num_clusters"] == 64 and conf["preprocessing"]["resize_max"] == 322
