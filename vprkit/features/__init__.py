"""Feature extraction: images -> global descriptors in HDF5 keyed by image name."""
