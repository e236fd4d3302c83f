"""Evaluation: Recall@N, mAP, prediction files and the HTML report."""
