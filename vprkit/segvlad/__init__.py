"""SegVLAD (Revisit Anything, ECCV 2024): place recognition by retrieving image segments.

Pipeline: `vprkit.segment` gives each image's masks; `graph` joins them into order-k SuperSegments
(Delaunay neighbours of mask centroids as the original, or touching segments); `describe` computes their VLAD
(DINOv2 tokens under the masks) and PCA; `index` stores all map segments and ranks map images by the votes
of the segments each query segment retrieves. `extract` holds the presets (`segvlad-ref`: the original's
choices; `segvote-*`: vprkit's), `api` the retrieval method, `vprkit.rerank.segvlad` the re-ranker.
"""
