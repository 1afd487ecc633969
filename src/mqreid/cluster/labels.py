"""Cluster label arrays (0..C-1, -1 = outlier): renumbering and a summary, shared by the clusterers."""

from __future__ import annotations

import numpy as np


def relabel_contiguous(labels: np.ndarray, min_cluster_size: int = 1) -> np.ndarray:
    """Labels [N] int64 renumbered 0..C-1 in order of first appearance; groups smaller than
    ``min_cluster_size`` and negative labels become -1."""
    labels = np.asarray(labels, np.int64)
    out = np.full(len(labels), -1, np.int64)
    valid = labels >= 0
    if not valid.any():
        return out
    uniq, first, inverse, counts = np.unique(labels[valid], return_index=True, return_inverse=True,
                                             return_counts=True)
    keep = counts >= min_cluster_size
    order = np.argsort(first[keep], kind="stable")  # number clusters by their first member
    new_id = np.full(len(uniq), -1, np.int64)
    new_id[np.flatnonzero(keep)[order]] = np.arange(keep.sum())
    out[valid] = new_id[inverse]
    return out


def cluster_summary(labels: np.ndarray) -> tuple[int, float]:
    """Number of clusters and outlier ratio of ``labels`` [N] (-1 = outlier)."""
    return int(labels.max(initial=-1) + 1), float(np.mean(labels == -1)) if len(labels) else 0.0
