"""SegVLAD (Revisit Anything, ECCV 2024): place recognition by retrieving image segments.

Pipeline: `vprkit.segment` splits each image into segments; `graph` joins touching segments into
order-k SuperSegments; `describe` computes their VLAD (DINOv2 tokens weighted by mask coverage) and
PCA; `index` stores all map segments and ranks map images by similarity-weighted votes of the segments
each query segment retrieves. `api` is the retrieval method, `vprkit.rerank.segvlad` the re-ranker.
"""
