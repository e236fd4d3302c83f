"""A released model behind the usual commands: `vprkit index --preset NAME [--checkpoint FILE]` stores the authors'
descriptor (re-derived by hand), queries use it, and re-rankers and `vprkit sequence` run on top."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import h5py
import numpy as np
import pytest
import torch
from conftest import TinyBackbone, use_backbone
from PIL import Image
from zoo_helpers import ENTRY, reference_descriptor, registry, released_state, with_weights  # noqa: F401 (registry)

from vprkit.cli import main
from vprkit.features import released
from vprkit.models import zoo
from vprkit.rerank.base import load_retrieval


@pytest.fixture
def zoo_index(register, image_folder, tmp_path, monkeypatch):
    """The folder indexed with the test preset from an authors'-style file (`state_dict`, `module.` keys)."""
    monkeypatch.setenv("VPRKIT_CACHE", str(tmp_path / "cache"))
    register()
    state = released_state()
    ckpt = tmp_path / "released.pth.tar"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    idx = tmp_path / "idx"
    assert main(["index", str(image_folder), "-o", str(idx), "--preset", ENTRY.preset, "--checkpoint", str(ckpt)]) == 0
    names = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    gt = tmp_path / "pos.txt"
    gt.write_text("".join(f"{n} {n}\n" for n in names))
    return idx, state, names, gt


def _stored(idx, names) -> np.ndarray:
    with h5py.File(idx / "map_features.h5") as f:
        desc = [f[n]["global"][()] for n in names]
    assert {d.dtype for d in desc} == {np.dtype(np.float32)}
    return np.stack(desc)


def test_index_stores_the_authors_descriptor(zoo_index, image_folder):
    idx, state, names, _ = zoo_index
    ref = np.stack([reference_descriptor(image_folder / n, state) for n in names])
    assert _stored(idx, names) == pytest.approx(ref, abs=1e-5)
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["dim"] == ENTRY.dim and json.loads(manifest["model_key"])["model"]["zoo"] == ENTRY.preset
    assert not (idx / "aggregator.npz").exists()  # nothing fitted on the map: no k-means, no PCA


def test_without_checkpoint_the_downloaded_file_is_used(register, image_folder, tmp_path, monkeypatch):
    """No --checkpoint: the entry's URL (a server on 127.0.0.1) is downloaded into the cache and loaded."""
    monkeypatch.setenv("VPRKIT_CACHE", str(tmp_path / "cache"))
    state = released_state(seed=7)
    (tmp_path / "www").mkdir()
    torch.save(state, tmp_path / "www" / "tiny_gem.pth")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        register(with_weights(url=f"http://127.0.0.1:{httpd.server_address[1]}/tiny_gem.pth"))
        assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", ENTRY.preset]) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (tmp_path / "cache" / "weights" / "tiny_gem.pth").read_bytes() == (tmp_path / "www" / "tiny_gem.pth"
                                                                              ).read_bytes()
    names = ["001.png", "sub/000.png"]
    ref = np.stack([reference_descriptor(image_folder / n, state) for n in names])
    assert _stored(tmp_path / "idx", names) == pytest.approx(ref, abs=1e-5)


def test_authors_settings_are_kept(register, image_folder, tmp_path, capsys):
    register()
    torch.save(released_state(), tmp_path / "w.pth")
    base = ["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", ENTRY.preset, "--checkpoint",
            str(tmp_path / "w.pth")]
    assert main([*base, "--resize-max", "64"]) == 2
    assert "uses the authors' test-time resize ([16, 20]); --resize-max does not apply" in capsys.readouterr().err
    assert main([*base, "--fp16"]) == 2
    assert "stores the authors' descriptor as float32" in capsys.readouterr().err


@pytest.fixture
def zoo_results(zoo_index, image_folder, tmp_path):
    """`vprkit query` of the folder against its zoo index (each image its own positive)."""
    idx, state, names, gt = zoo_index
    res = tmp_path / "res"
    assert main(["query", str(idx), str(image_folder), "--top-k", "5", "-o", str(res), "--gt", str(gt), "--preset",
                 ENTRY.preset]) == 0
    return res, gt, names


def test_queries_are_described_with_the_maps_released_model(zoo_results, zoo_index, image_folder, capsys):
    res, _, names = zoo_results
    ret = load_retrieval(res)
    assert [ret.m_names[i] for i in ret.ids[:, 0]] == ret.q_names == names  # identical images: self first
    assert json.loads((res / "results.json").read_text())["metrics"]["R@1"] == 1.0
    idx = zoo_index[0]
    assert main(["query", str(idx), str(image_folder), "-o", str(res.parent / "r2"), "--preset", "dinov2-vlad"]) == 2
    assert "would compare different descriptor spaces" in capsys.readouterr().err


def _reranked_keeps_candidates_and_finds_self(res, out) -> None:
    glob, got = load_retrieval(res), load_retrieval(out)
    assert [got.m_names[i] for i in got.ids[:, 0]] == got.q_names
    assert [sorted(a) for a in got.ids.tolist()] == [sorted(a) for a in glob.ids.tolist()]
    assert json.loads((out / "results.json").read_text())["metrics"]["R@1"] == 1.0


def test_patchnetvlad_speed_on_a_released_model(zoo_results, monkeypatch):
    use_backbone(monkeypatch, TinyBackbone)
    res, gt, _ = zoo_results
    out = res / "pnv"
    assert main(["rerank", str(res), "--method", "patchnetvlad", "--preset", "speed", "--gt", str(gt), "-o", str(out),
                 "--match-figures", "0", "--set", "resize=[32,24]", "num_clusters=4", "num_pcs=16",
                 "fit_max_images=12", "fit_max_patches=400"]) == 0
    _reranked_keeps_candidates_and_finds_self(res, out)


def test_chamfer_on_a_released_model(zoo_results, monkeypatch):
    use_backbone(monkeypatch, TinyBackbone)
    res, gt, _ = zoo_results
    out = res / "chamfer"
    assert main(["rerank", str(res), "--method", "chamfer", "-o", str(out), "--gt", str(gt), "--set",
                 "num_query_desc=8", "num_map_desc=8", "resize_max=32", "lamb=0.0", "temp=1.0"]) == 0
    _reranked_keeps_candidates_and_finds_self(res, out)


def test_sequence_on_a_released_model(zoo_index, image_folder, tmp_path):
    """SeqSLAM over the map's own frames in order: every frame finds itself (the diagonal)."""
    idx, _, names, gt = zoo_index
    out = tmp_path / "seq"
    assert main(["sequence", str(idx), str(image_folder), "--method", "seqslam", "--set", "ds=3", "enhance=0",
                 "-o", str(out), "--gt", str(gt)]) == 0
    rows = [line.split() for line in (out / "sequence.txt").read_text().splitlines()[1:]]
    assert len(rows) == len(names)
    assert json.loads((out / "results.json").read_text())["metrics"]["R@1"] == 1.0


def test_tensor_resize_is_torchvisions_resize_after_to_tensor(image_folder):
    """"bicubic-tensor" (BoQ's ToTensor -> Resize -> Normalize): the [0, 1] float image resized with antialias,
    then normalised; it keeps what a PIL resize would round to 8 bits and clip."""
    from vprkit.features.extract import authors_input

    img = Image.open(image_folder / "001.png").convert("RGB")
    backbone = TinyBackbone()
    backbone.mean, backbone.std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = authors_input(backbone, img, {"resize": [40, 52], "interpolation": "bicubic-tensor"})
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(x, size=(40, 52), mode="bicubic", antialias=True)[0]
    expected = (resized - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    assert got.shape == (3, 40, 52) and torch.allclose(got, expected, atol=1e-5)
    assert resized.min() < 0 or resized.max() > 1  # bicubic overshoot kept: not a PIL (uint8) resize
    pil = authors_input(backbone, img, {"resize": [40, 52], "interpolation": "bicubic"})
    assert not torch.allclose(pil, got, atol=1e-3)


def _cosplace_release(path) -> None:
    """A random-weight CosPlace ResNet-18 / 512 file in the authors' format: a bare state dict of their
    `GeoLocalizationNet` (`backbone.N` torchvision children, `aggregation.1.p` GeM, `aggregation.3` fc), with
    random BatchNorm statistics."""
    from vprkit.aggregators import get_aggregator
    from vprkit.models import get_backbone

    entry = zoo.get("cosplace-r18-512")
    gen = torch.Generator().manual_seed(3)
    ours = {f"backbone.{k}": v for k, v in get_backbone(**entry.backbone).state_dict().items()}
    ours |= {f"aggregator.{k}": v for k, v in get_aggregator(**entry.aggregator).state_dict().items()}
    renames = [("backbone.conv1.", "backbone.0."), ("backbone.bn1.", "backbone.1."),
               ("backbone.layer1.", "backbone.4."), ("backbone.layer2.", "backbone.5."),
               ("backbone.layer3.", "backbone.6."), ("backbone.layer4.", "backbone.7."),
               ("aggregator.p", "aggregation.1.p"), ("aggregator.fc.", "aggregation.3.")]
    authors = {}
    for key, value in ours.items():
        old, new = next((o, n) for o, n in renames if key.startswith(o))
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=gen) + 0.5 if "running_var" in key else \
                torch.randn(value.shape, generator=gen) * 0.1
        authors[new + key[len(old):]] = value
    authors["aggregation.1.p"] = torch.tensor([3.0])
    torch.save(authors, path)


def test_a_cnn_preset_from_its_authors_file(image_folder, tmp_path, monkeypatch):
    """`cosplace-r18-512` from a CosPlace-format file: the stored descriptors are the built model's on the image as
    given, ImageNet-normalised (CosPlace's test transform), and queries find each image itself."""
    monkeypatch.setenv("VPRKIT_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ResNet18_512_cosplace.pth"
    _cosplace_release(ckpt)
    idx = tmp_path / "idx"
    assert main(["index", str(image_folder), "-o", str(idx), "--preset", "cosplace-r18-512", "--checkpoint",
                 str(ckpt)]) == 0
    backbone, aggregator = released.build(zoo.get("cosplace-r18-512"), ckpt)
    names = ["001.png", "sub/003.png"]
    x = torch.stack([torch.from_numpy((np.asarray(Image.open(image_folder / n).convert("RGB"), dtype=np.float32)
                                       / 255 - np.array([0.485, 0.456, 0.406], dtype=np.float32))
                                      / np.array([0.229, 0.224, 0.225], dtype=np.float32)).permute(2, 0, 1)
                     for n in names])
    with torch.no_grad():
        out = backbone(x)
        ref = aggregator(out.local, out.global_token).numpy()
    assert np.linalg.norm(ref, axis=1) == pytest.approx(1.0, abs=1e-5)  # CosPlace's final L2
    assert _stored(idx, names) == pytest.approx(ref, abs=1e-5)
    res = tmp_path / "res"
    assert main(["query", str(idx), str(image_folder), "--top-k", "3", "-o", str(res), "--preset",
                 "cosplace-r18-512"]) == 0
    with h5py.File(res / "query_features.h5") as f:  # queries described by the index's model: each its map twin
        assert np.stack([f[n]["global"][()] for n in names]) == pytest.approx(ref, abs=1e-5)
    assert load_retrieval(res).scores[:, 0] == pytest.approx(1.0, abs=1e-5)
