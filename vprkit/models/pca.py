"""PCA(-whitening) fitted on descriptors: used by aggregators (VLAD), re-rankers and AMES's models alike, so it
sits at the models layer, below all of them."""

from __future__ import annotations

import numpy as np
import torch


def fit_pca(x: np.ndarray, dim: int, whiten: bool = True, eps: float = 1e-6, exact_max: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the rows of `x` (N, D): (mean (D,), projection (d, D)), applied as (v - mean) @ projection.T.

    Rows are the principal axes, largest variance first, each signed so that its largest entry is positive
    (a deterministic result); with `whiten` each is divided by its standard deviation sqrt(var + eps).
    d = min(dim, N - 1, D, numerical rank): axes without variance in `x` carry no information, and
    whitening would blow their noise up. The N x N Gram matrix is decomposed when N <= D (VLADs have
    K*C = 12k-16k dims, maps a few thousand vectors: seconds instead of an SVD of the whole matrix),
    the D x D scatter matrix otherwise; large products in float32, eigen-decompositions in float64.
    When min(N, D) > `exact_max` (tens of thousands of segment VLADs: an exact decomposition would take an
    hour on a CPU) the top `dim` axes come from a seeded randomized SVD with 4 power iterations instead,
    as iterative solvers (ARPACK) do.
    """
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n, d_in = x.shape
    mean = x.double().mean(0)
    xc = x - mean.float()
    lowrank = exact_max is not None and min(n, d_in) > exact_max
    if lowrank:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _, sing, v = torch.svd_lowrank(xc, q=min(dim + 16, n, d_in), niter=4)
        evals = sing.double() ** 2
    else:
        gram = n <= d_in
        evals, evecs = torch.linalg.eigh((xc @ xc.T).double() if gram else xc.double().T @ xc.double())
        evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    keep = min(dim, n - 1, d_in, int((evals > evals[0] * 1e-10).sum())) if n else 0
    if lowrank:
        axes = v[:, :keep].double()
    elif gram:  # right singular vectors from left ones: x^T u / sigma
        axes = (xc.T @ evecs[:, :keep].float()).double() / evals[:keep].sqrt()
    else:
        axes = evecs[:, :keep]
    axes = axes * torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    proj = axes.T
    if whiten:
        proj = proj / (evals[:keep] / max(n - 1, 1) + eps).sqrt()[:, None]
    return mean.float().numpy(), proj.float().numpy()
