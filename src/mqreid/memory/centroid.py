"""Cluster Contrast's centroid memory (Dai et al., 2021): one momentum-updated centroid per cluster."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ClusterMemory


class CentroidMemory(ClusterMemory):
    """Centroids [C, D], initialised to the normalised cluster means.

    ``update`` applies, for each sample x of cluster y in batch order, ``c_y <- normalise(m * c_y + (1 - m) x)``
    (``m`` = ``momentum``, 0.1 as in Cluster Contrast: the new sample dominates). With ``hard=True`` only the
    sample of each cluster least similar to its centroid is used (Cluster Contrast's hard-sample update).
    The per-sample recursion is exact: it loops over the position within a cluster (at most K steps, K the
    instances per identity), vectorised over clusters.
    """

    def __init__(self, num_features: int, num_clusters: int, momentum: float = 0.1, hard: bool = False,
                 seed: int = 0) -> None:
        super().__init__(num_features, num_clusters, seed)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory.momentum={momentum}: expected a number in [0, 1]")
        self.momentum, self.hard = momentum, hard
        self.register_buffer("features", torch.zeros(num_clusters, num_features))

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self._check(features, labels, allow_outliers=True)
        self.features.copy_(self.centroids(features.to(self.features), labels.to(self.features.device),
                                           self.num_clusters))

    def proxies(self) -> torch.Tensor:
        return self.features

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self._check(features, labels)
        x = F.normalize(features.detach().to(self.features.dtype), dim=1)
        m = self.momentum
        if self.hard:
            sim = (x * self.features[labels]).sum(1)
            # per cluster, the batch sample with the lowest similarity to its centroid
            lowest = torch.full((self.num_clusters,), float("inf"), device=x.device).scatter_reduce(
                0, labels, sim, reduce="amin")
            is_hard = sim == lowest[labels]
            first = torch.full((self.num_clusters,), labels.numel(), device=x.device, dtype=torch.long)
            first = first.scatter_reduce(0, labels[is_hard], torch.nonzero(is_hard).squeeze(1), reduce="amin")
            ys = torch.unique(labels)
            self.features[ys] = F.normalize(m * self.features[ys] + (1 - m) * x[first[ys]], dim=1)
            return
        order, ys, counts, rank = self.rank_within_cluster(labels, self.num_clusters)
        for r in range(int(counts.max()) if ys.numel() else 0):
            sel = rank == r  # at most one sample per cluster at this position
            y = ys[sel]
            self.features[y] = F.normalize(m * self.features[y] + (1 - m) * x[order[sel]], dim=1)
