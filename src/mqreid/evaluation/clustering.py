"""Quality of pseudo labels against the true training identities, and how clusters and neighbours follow
cameras."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def pseudo_label_quality(true_ids, labels) -> dict[str, float]:
    """ARI, NMI and purity of the clustered samples, plus the outlier ratio.

    ``true_ids`` and ``labels`` are [N] integer arrays; ``labels == -1`` marks outliers, which are left out
    of ARI/NMI/purity (their share is reported as ``outlier_ratio``). Purity is the fraction of clustered
    samples that belong to their cluster's majority identity.
    """
    true_ids, labels = np.asarray(true_ids), np.asarray(labels)
    if true_ids.shape != labels.shape:
        raise ValueError(f"true_ids {true_ids.shape} and labels {labels.shape} must have the same shape")
    keep = labels >= 0
    out = {"outlier_ratio": float(1.0 - keep.mean()) if labels.size else 0.0}
    if keep.sum() == 0:
        return {**out, "ari": 0.0, "nmi": 0.0, "purity": 0.0}
    t, p = true_ids[keep], labels[keep]
    cont = contingency_matrix(p, t, sparse=True)
    return {**out, "ari": float(adjusted_rand_score(t, p)), "nmi": float(normalized_mutual_info_score(t, p)),
            "purity": float(cont.max(axis=1).sum() / keep.sum())}


def camera_statistics(true_ids, cameras, labels) -> dict[str, float]:
    """How a clustering splits identities and follows cameras: ``clusters_per_id``, the mean number of
    clusters the clustered images of a true identity fall into (1 = never split), and
    ``single_camera_clusters``, the share of clusters whose images all come from one camera.

    ``true_ids``, ``cameras`` and ``labels`` are [N] integer arrays; ``labels == -1`` marks outliers,
    which are left out."""
    true_ids, cameras, labels = np.asarray(true_ids), np.asarray(cameras), np.asarray(labels)
    if not true_ids.shape == cameras.shape == labels.shape:
        raise ValueError(f"true_ids {true_ids.shape}, cameras {cameras.shape} and labels {labels.shape} must "
                         "have the same shape")
    keep = labels >= 0
    if not keep.any():
        return {"clusters_per_id": 0.0, "single_camera_clusters": 0.0}
    t, c, p = true_ids[keep], cameras[keep], labels[keep]
    pairs = np.unique(np.stack([t, p]), axis=1)  # distinct (identity, cluster)
    per_cluster = np.unique(np.stack([p, c]), axis=1)[0]  # one entry per distinct (cluster, camera)
    return {"clusters_per_id": float(pairs.shape[1] / np.unique(t).size),
            "single_camera_clusters": float(np.mean(np.bincount(per_cluster)[np.unique(p)] == 1))}


def same_camera_neighbours(features, cameras, k: int = 15) -> float:
    """Mean share of an image's ``k`` nearest neighbours (cosine similarity, the image itself left out)
    taken by its own camera. ``features`` [N, D] (torch or numpy), ``cameras`` [N]."""
    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    cams = torch.as_tensor(np.asarray(cameras), device=x.device)
    k = min(k, x.shape[0] - 1)
    if k < 1:
        raise ValueError(f"same_camera_neighbours: needs at least 2 images, got {x.shape[0]}")
    shares = []
    for start in range(0, x.shape[0], 1024):  # 1,024 rows of similarities at a time
        sim = x[start:start + 1024] @ x.T
        sim[torch.arange(sim.shape[0]), torch.arange(start, start + sim.shape[0])] = -float("inf")
        top = sim.topk(k, dim=1).indices
        shares.append((cams[top] == cams[start:start + 1024, None]).float().mean(1))
    return float(torch.cat(shares).mean())
