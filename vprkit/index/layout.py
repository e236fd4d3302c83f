"""The index folder's file names and its resumable build folder: the one place that spells them.

An index folder (`vprkit index MAP -o IDX`) holds:
  manifest.json      conf, model key, map folder, names, positions, versions (+ index choice, dimension)
  index.faiss        the FAISS index (absent for a SegVLAD index; on-disk lists beside it: index.ivfdata)
  map_features.h5    the map's global descriptors, keyed by image name (re-rankers and sequences read them)
  aggregator.npz     the fitted aggregator state (VLAD vocabulary, PCA), when the aggregator needs one
  descriptors.npy    exact descriptors for re-scoring a compressed index (`index --memory-budget`)
  journal.log, images/   additions and removals of a map grown through the service or `index --append`
  vprkit-index.json  the marker: format and version, and the files the build wrote (the rest is the user's)
  generations/N/, current   compacted generations of the base files and the link to the live one
A query results folder (`vprkit query`) keeps the queries' descriptors in query_features.h5 (SegVLAD:
query_segments.h5); see `vprkit.results` for the rest of it. This module only names files (it imports nothing),
so every module of `index` can use it; the build folder is in `index.work`.
"""

from __future__ import annotations

INDEX_FILE, MANIFEST_FILE = "index.faiss", "manifest.json"
MAP_FEATURES, STATE_FILE = "map_features.h5", "aggregator.npz"
DESCRIPTORS_FILE, IVFDATA_FILE = "descriptors.npy", "index.ivfdata"
JOURNAL_FILE, IMAGES_DIR = "journal.log", "images"
MARKER_FILE, FORMAT, FORMAT_VERSION = "vprkit-index.json", "vprkit-index", 1  # what makes a folder an index
CURRENT, GENERATIONS = "current", "generations"  # compacted generations and the link to the live one
MANIFEST_FIELDS = {"conf", "names", "map_dir"}  # an index written before the marker: its manifest has these
QUERY_FEATURES, QUERY_SEGMENTS = "query_features.h5", "query_segments.h5"
SEGMENT_FEATURES, SEGMENT_STATE = "map_segments.h5", "segvlad_state.npz"  # a SegVLAD index's map and vocabulary
SEGMENTS_FILE, OWNER_FILE = "segments.npy", "segment_image.npy"
