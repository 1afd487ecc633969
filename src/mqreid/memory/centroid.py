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
    instances per identity), vectorised over clusters, without reading values from the device when the caller
    passes ``max_per_cluster``.
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
    def update(self, features: torch.Tensor, labels: torch.Tensor, max_per_cluster: int | None = None) -> None:
        self._check(features, labels)
        if not labels.numel():
            return
        x = F.normalize(features.detach().to(self.features.dtype), dim=1)
        m = self.momentum
        if self.hard:
            sim = (x * self.features[labels]).sum(1)
            # per cluster, the batch sample with the lowest similarity to its centroid (the first of equals)
            lowest = torch.full((self.num_clusters,), float("inf"), device=x.device).scatter_reduce(
                0, labels, sim, reduce="amin")
            is_hard = sim == lowest[labels]
            positions = torch.arange(labels.numel(), device=x.device)
            first = torch.full((self.num_clusters,), labels.numel(), device=x.device, dtype=torch.long)
            first = first.scatter_reduce(0, labels, torch.where(is_hard, positions, labels.numel()), reduce="amin")
            # every centroid is computed and those without a sample in the batch are kept: no data-dependent size
            moved = F.normalize(m * self.features + (1 - m) * x[first.clamp(max=labels.numel() - 1)], dim=1)
            self.features.copy_(torch.where((first < labels.numel()).unsqueeze(1), moved, self.features))
            return
        order, ys, counts, rank = self.rank_within_cluster(labels, self.num_clusters)
        # One pass per position within a cluster; at each, every sample computes its update and the ones not
        # at that position write it into a spare row C. No boolean mask, so no wait on the device for its size;
        # the number of passes comes from the caller's host-side bound when given.
        passes = int(counts.max()) if max_per_cluster is None else max_per_cluster
        table = torch.cat([self.features, self.features.new_zeros(1, self.num_features)])
        xs = x[order]
        for r in range(passes):
            rows = torch.where(rank == r, ys, self.num_clusters)
            table.index_copy_(0, rows, F.normalize(m * table[ys] + (1 - m) * xs, dim=1))
        self.features.copy_(table[:-1])
