"""What `vprkit train head` trains: the head (`TokenHead`) and, with `train.finetune=N`, the backbone's last N
blocks (the tail) on top of the cached output of the frozen stem.

Its state dict names the head's weights `aggregator.*` and the tail's `backbone.*` with the backbone's own names,
so `vprkit index --checkpoint RUN/best.pt` loads the head into the aggregator and the tail into a fresh backbone
(models/head_checkpoint.py). Batch norm in the tail keeps its ImageNet statistics (batches of a few places would
give poor ones); the tail's other layers train.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import BackboneOutput
from . import token_cache


class HeadModel(nn.Module):
    """The trainable part: an optional backbone tail, then the head, on cached stem (or backbone) tokens."""

    def __init__(self, aggregator: nn.Module, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.aggregator = aggregator
        self.backbone = tail

    def features(self, local: torch.Tensor, cls: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The backbone's output tokens (the tail run on the stem's), as the head sees them."""
        if self.backbone is None:
            return local, cls
        out = self.backbone(BackboneOutput(local, cls))
        return out.local, out.global_token

    def pool(self, local: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        return self.aggregator.pool(*self.features(local, cls))

    def train(self, mode: bool = True) -> HeadModel:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def describe(model: HeadModel, tokens: token_cache.Tokens, idx=None, batch: int = 256,
             grad: bool = False) -> torch.Tensor:
    """Descriptors (N, D) of (a selection of) cached tokens; images of other grid sizes run apart."""
    idx = range(len(tokens)) if idx is None else idx
    device = next(model.parameters()).device
    out = []
    with torch.set_grad_enabled(grad):
        for s in range(0, len(idx), batch):
            part = idx[s:s + batch]
            groups: dict[tuple, list[int]] = {}
            for k, i in enumerate(part):
                groups.setdefault(tuple(tokens.local[i].shape), []).append(k)
            desc = [None] * len(part)
            for ks in groups.values():
                local = torch.stack([tokens.local[part[k]] for k in ks]).float().to(device)
                cls = None if tokens.cls is None else torch.stack([tokens.cls[part[k]] for k in ks]).float().to(device)
                for k, d in zip(ks, model.pool(local, cls)):
                    desc[k] = d
            out.append(torch.stack(desc))
    return torch.cat(out)


def evaluated(model: HeadModel, tokens: token_cache.Tokens) -> torch.Tensor:
    """Descriptors of all `tokens` with the model in eval mode (its mode restored after)."""
    was = model.training
    model.eval()
    try:
        return describe(model, tokens)
    finally:
        model.train(was)


def fit_sample(model: HeadModel, tokens: token_cache.Tokens, count: int, rng) -> torch.Tensor:
    """Up to `count` local features (N, C) of the backbone's output, sampled from cached tokens (NetVLAD's
    k-means; with a tail, its output, not the cached stem's)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        maps = [model.features(t[None].float().to(device),
                               None if tokens.cls is None else tokens.cls[i][None].float().to(device))[0][0]
                for i, t in enumerate(tokens.local)]
    x = torch.cat([m.flatten(1).T for m in maps])
    return x[torch.from_numpy(rng.choice(len(x), min(len(x), count), replace=False))]
