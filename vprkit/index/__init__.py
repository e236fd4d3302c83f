"""FAISS index over map descriptors, saved with a manifest that guards against model mix-ups."""
