"""Writes reference.npz: outputs of the AMES authors' model (pavelsuma/ames at 886851d, `src/models/matcher.py`)
on fixed small inputs and weights, for tests/test_ames.py. Needs a checkout of their repository; run with torch:

    git clone https://github.com/pavelsuma/ames /tmp/ames && (cd /tmp/ames && git checkout 886851d)
    python tests/data/ames_reference/make.py /tmp/ames tests/data/ames_reference/reference.npz
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(sys.argv[1]) / "src"))
from models.matcher import AMES  # noqa: E402  (the authors' model)

SIZES = {"local_dim": 16, "model_dim": 8, "nhead": 2, "num_encoder_layers": 2, "dim_feedforward": 16,
         "activation": "relu", "normalize_before": False}


def model(binarized: bool, root: str) -> AMES:
    torch.manual_seed(1 if binarized else 0)
    net = AMES(data_root=root, binarized=binarized, **SIZES)
    with torch.no_grad():  # larger than their init, so that the scores differ between pairs
        for p in net.parameters():
            p.copy_(torch.randn(p.shape) * 1.5)
    return net


def main() -> None:
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(4, 6, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    src_pad = torch.arange(6)[None] >= torch.tensor([6, 4, 2, 3])[:, None]  # True = padding, as theirs
    tgt_pad = torch.arange(5)[None] >= torch.tensor([5, 3, 4, 0])[:, None]  # the last target has no descriptor
    out = {"src": src.numpy(), "tgt": tgt.numpy(), "src_pad": src_pad.numpy(), "tgt_pad": tgt_pad.numpy()}
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "networks").mkdir()
        np.savez(Path(root) / "networks" / "itq_dinov2_D128.npz", proj=np.zeros((16, 8), dtype=np.float32))
        for name, binarized in (("fp", False), ("binary", True)):
            net = model(binarized, root)
            for k, v in net.state_dict().items():
                out[f"{name}/{k}"] = v.numpy()
            with torch.no_grad():
                net.eval()
                out[f"{name}/eval"] = net(src, src_pad, tgt, tgt_pad).numpy()
                net.train()
                out[f"{name}/train"] = net(src, src_pad, tgt, tgt_pad).numpy()
    np.savez_compressed(sys.argv[2], **out)
    print({k: v for k, v in out.items() if k.endswith(("eval", "train"))})


if __name__ == "__main__":
    main()
