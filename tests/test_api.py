"""The Python API: every step the CLI runs is exposed, and live images are described exactly as offline extraction
describes the same image files (one preprocessing and batching path), for every preset."""

import numpy as np
import pytest
import torch
from conftest import TinyBackbone
from PIL import Image

from vprkit import api
from vprkit.data.images import list_images, load_image
from vprkit.evaluation.outputs import read_predictions
from vprkit.features import extract, h5io
from vprkit.index.layout import QUERY_FEATURES
from vprkit.models import MissingWeightsError
from vprkit.results import read_results
from vprkit.sequence.localizer import SequenceLocalizer

# (height, width): landscape, portrait and square images, so offline batches split by shape
SIZES = [(24, 32), (32, 24), (24, 32), (28, 28)]


def _folder(root, n: int, seed: int):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    return _folder(base / "map", 4, 0), _folder(base / "query", 4, 1)


def _offline_and_live(map_dir, query_dir, out, preset: str, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """Query descriptors as `vprkit query` stored them, and as `api.describe` computes them from decoded images."""
    try:
        index = api.index_map(map_dir, out / "idx", preset=preset, **overrides)
    except MissingWeightsError as exc:
        pytest.skip(f"{preset}: weights not installed ({exc})")
    res = api.localize(index, query_dir, out / "res", top_k=2)
    names = list_images(query_dir)
    offline = h5io.read_global(res / QUERY_FEATURES, names)
    assert read_results(res)["num_queries"] == len(names) == 4
    return offline, api.describe([load_image(query_dir / n) for n in names], index)


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if conf["model"]["name"].startswith("vgg")
                                    else p for p, conf in sorted(extract.CONFS.items())])  # VGG19: ~30 s each
def test_live_descriptors_equal_offline_ones_for_every_preset(preset, folders, tmp_path, one_thread):
    offline, live = _offline_and_live(*folders, tmp_path, preset)
    assert live.dtype == np.float32 and live.shape == offline.shape
    np.testing.assert_array_equal(live, offline)


def test_resize_min_is_honoured_live_as_offline(tiny_backbone, folders, tmp_path):
    pre = {"resize_max": None, "resize_min": 20}
    offline, live = _offline_and_live(*folders, tmp_path, "mobilenetv2-gem", preprocessing=pre)
    np.testing.assert_array_equal(live, offline)
    # short side 24 -> 20 and long side 32 * 20 / 24 = 26.7 -> 28, the nearest multiple of the stride (4)
    conf = extract.CONFIG.resolve("mobilenetv2-gem", preprocessing=pre)
    x = extract.prepare(Image.new("RGB", (32, 24)), conf, tiny_backbone())
    assert tuple(x.shape) == (3, 20, 28)


def test_images_in_memory_are_decoded_as_files(tiny_backbone, folders, tmp_path):
    """A transparent PNG and an EXIF-rotated JPEG, given as opened (not converted, not rotated) PIL images."""
    rng = np.random.default_rng(2)
    query = tmp_path / "odd"
    query.mkdir()
    rgba = (rng.random((24, 32, 4)) * 255).astype(np.uint8)  # alpha varies: composited over white, not dropped
    Image.fromarray(rgba, "RGBA").save(query / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(query / "b.jpg", exif=exif.tobytes())
    index = api.index_map(folders[0], tmp_path / "idx", preset="mobilenetv2-gem")
    res = api.localize(index, query, tmp_path / "res", top_k=1)
    offline = h5io.read_global(res / QUERY_FEATURES, ["a.png", "b.jpg"])
    live = api.describe([Image.open(query / "a.png"), Image.open(query / "b.jpg")], index)
    np.testing.assert_array_equal(live, offline)
    # what the checks guard against: alpha dropped, orientation ignored
    dropped = Image.open(query / "a.png").convert("RGB")
    unrotated = Image.fromarray(np.asarray(Image.open(query / "b.jpg")))
    assert not np.array_equal(api.describe([dropped], index)[0], live[0])
    assert not np.array_equal(api.describe([unrotated], index)[0], live[1])


def test_batches_follow_the_offline_rule():
    """Consecutive equal shapes share a batch of at most batch_size; a new shape or a full batch starts one."""
    shapes = [(4, 4), (4, 4), (4, 4), (8, 4), (4, 4), (4, 4)]  # the fifth (index 4) failed to read
    items = [(str(i), None if i == 4 else torch.zeros((3, *s))) for i, s in enumerate(shapes)]
    got = [(names, tuple(t.shape), bad) for names, t, bad in extract.group(items, 2)]
    # a failure is reported with the next batch given out
    assert got == [(["0", "1"], (2, 3, 4, 4), []), (["2"], (1, 3, 4, 4), []), (["3"], (1, 3, 8, 4), ["4"]),
                   (["5"], (1, 3, 4, 4), [])]


def test_streaming_localizer_describes_as_offline(tiny_backbone, folders, tmp_path):
    map_dir, _ = folders
    one = _folder(tmp_path / "one", 1, 1)  # a query alone: an offline batch of one, as a stream's frame
    # resize_min set: the localizer used to resize by resize_max alone
    index = api.index_map(map_dir, tmp_path / "idx", preset="mobilenetv2-gem",
                          preprocessing={"resize_max": None, "resize_min": 20})
    api.localize(index, one, top_k=2, out_dir=tmp_path / "res")
    offline = h5io.read_global(tmp_path / "res" / QUERY_FEATURES, ["000.png"])[0]
    frame = np.asarray(load_image(one / "000.png"))  # a stream frame as an H x W x 3 array
    np.testing.assert_array_equal(SequenceLocalizer(index, "seqslam").describe(frame), offline)


def test_search_gives_the_rankings_of_vprkit_query(tiny_backbone, folders, tmp_path):
    map_dir, query_dir = folders
    index = api.index_map(map_dir, tmp_path / "idx", preset="mobilenetv2-gem")
    api.localize(index, query_dir, top_k=3, out_dir=tmp_path / "res")
    q_names, m_names, ids, scores = read_predictions(tmp_path / "res" / "predictions.txt")
    names = list_images(query_dir)
    model = api.model(index)  # built once, used for many calls
    hits = api.search(index, api.describe([load_image(query_dir / n) for n in names], model), top_k=3)
    assert q_names == names
    assert hits.names == [[m_names[j] for j in row] for row in ids]
    np.testing.assert_allclose(hits.scores, scores, atol=1e-4)  # predictions.txt keeps 4 decimals
    assert api.describe([], model).shape == (0, TinyBackbone.dim)  # GeM keeps the backbone's 8 channels


def test_every_cli_step_is_in_the_api():
    steps = ["index_map", "append_map", "localize", "rerank", "sequence", "evaluate", "compare", "export",
             "segvlad_index", "segvlad_localize", "train_netvlad", "train_ames", "train_gcsa", "serve", "describe",
             "search", "model"]
    assert all(callable(getattr(api, s)) for s in steps) and set(steps) <= set(api.__all__)


def test_conf_resolves_any_step_as_the_command_line_does():
    from vprkit.rerank.ames import AMESReranker
    from vprkit.train import gcsa

    assert api.conf("rerank ames", "fp", checkpoint="m.pt") == AMESReranker.CONFIG.resolve("fp", checkpoint="m.pt")
    assert api.conf("train gcsa") == gcsa.CONFIG.resolve(None)
    assert api.conf("index", "dinov2-gem", preprocessing={"resize_max": 224})["preprocessing"]["resize_max"] == 224
    with pytest.raises(ValueError, match="unknown step 'nope'"):
        api.conf("nope")
