"""Patch-NetVLAD re-ranking (Hausler et al., CVPR 2021) with the original's three presets.

For each query, the top-N candidates of the global retrieval are re-ordered by matching multi-scale
patch descriptors (`vprkit.features.patches`): mutual nearest neighbours, then RANSAC inliers
('performance') or rapid spatial scoring ('speed', 'storage') per patch size, z-normalised over the
query's candidates and fused with per-size weights (`vprkit.rerank.spatial`). All candidates of a query
are matched in one batched torch call (CPU or CUDA: `--set device=cuda`).

Patch features come from, in order of preference:
  1. `checkpoint=FILE`: a Patch-NetVLAD / NetVLAD checkpoint (VGG16 `encoder.*`, `pool.conv.weight`,
     `pool.centroids`, optional `WPCA.0.weight/bias`), loaded with `weights_only=True`;
  2. the index's own NetVLAD when the global preset is VGG19 + NetVLAD (`vgg19-netvlad`);
  3. VGG19 conv5_4 (bundled Oxford weights) + a NetVLAD whose centroids are k-means-fitted on the map.
PCA-whitening (no checkpoint PCA) is fitted on the map's patches. Features are cached in the
re-ranking folder as fp16 HDF5 (resumable) and reused on the next run.

The package: `reranker` (the step's method), `matcher` (patch matching and scoring), `model` (the patch model, its
NetVLAD and PCA fitted or loaded), `files` (the authors' checkpoints, the cached model state, the original's
output files), `draw` (match figures), `match_two` (`vprkit match-two`).
"""

from .draw import draw_matches
from .match_two import match_two
from .matcher import Matcher
from .model import build_model
from .reranker import CASCADE_SHARED, PatchNetVLAD, cascade_head

__all__ = ["CASCADE_SHARED", "Matcher", "PatchNetVLAD", "build_model", "cascade_head", "draw_matches", "match_two"]
