"""Pictures of a run: ranked lists of query/gallery retrieval and galleries of pseudo-label clusters.

matplotlib is optional (the ``viz`` extra): without it the pictures are skipped with one warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mqreid.data.base import ReIDDataset, id_arrays
from mqreid.evaluation import pairwise_distance

log = logging.getLogger("mqreid")


def _visualize():
    from mqreid import visualize  # matplotlib is imported on the first picture, not with the trainer

    return visualize


def ranked_lists(path: Path, dataset: ReIDDataset, query_features: torch.Tensor, gallery_features: torch.Tensor,
                 num_queries: int, metric: str = "euclidean", seed: int = 0) -> Path:
    """``num_queries`` rows (the worst and best queries by AP, and random ones), each the query and its top 10
    gallery images, written to ``path``. Holds the Q x G distance matrix (4 bytes per pair)."""
    visualize = _visualize()
    (query_pids, query_cams), (gallery_pids, gallery_cams) = id_arrays(dataset.query), id_arrays(dataset.gallery)
    distances = pairwise_distance(query_features, gallery_features, metric).numpy()
    figure = visualize.ranked_list_figure([it.path for it in dataset.query], [it.path for it in dataset.gallery],
                                          distances, query_pids, gallery_pids, query_cams, gallery_cams,
                                          num_queries=num_queries, topk=10, seed=seed)
    return visualize.save_figure(figure, path)


def cluster_gallery(path: Path, dataset: ReIDDataset, labels: np.ndarray, seed: int = 0) -> Path:
    """Rows of pseudo-label clusters (the largest, the most impure, random ones) and a row of outliers,
    each image marked with its true id when the dataset knows it, written to ``path``."""
    visualize = _visualize()
    true_pids = id_arrays(dataset.train)[0] if dataset.train_labels_known else None
    figure = visualize.cluster_gallery_figure([it.path for it in dataset.train], labels, true_pids, seed=seed)
    return visualize.save_figure(figure, path)
