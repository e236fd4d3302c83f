"""Data: image folders and ground truth."""
