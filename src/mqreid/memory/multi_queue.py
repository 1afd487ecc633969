"""Multi-queue memory: every cluster keeps a ring buffer of its recent features; one entry per step is its proxy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mqreid.utils.errors import setting_problem

from .base import ClusterMemory

INITS = ("centroid", "centroid_normalized", "members")
PROXIES = ("random", "mean")


class MultiQueueMemory(ClusterMemory):
    """Queues [C, queue_size, D] of features.

    - ``init="centroid"`` fills each queue with its cluster's mean feature, *not* normalised, repeated
      ``queue_size`` times: what the original code does. ``"centroid_normalized"`` uses the L2-normalised
      mean; ``"members"`` fills the queue with members of the cluster drawn at random (with replacement
      when the cluster is smaller than the queue).
    - ``proxy="random"`` samples one queue entry per cluster at every step (the method); ``"mean"`` uses the
      normalised queue mean.
    - ``update`` writes each L2-normalised batch feature into the next slot of its cluster's ring buffer
      (the original computes a momentum blend and then overwrites it with the raw feature, so the raw
      feature is what it keeps). Vectorised: no Python loop over samples or clusters, no host round trip.

    Random draws (proxies, members) come from the memory's own generator seeded with ``seed``.
    """

    def __init__(self, num_features: int, num_clusters: int, queue_size: int = 16, init: str = "centroid",
                 proxy: str = "random", seed: int = 0) -> None:
        super().__init__(num_features, num_clusters, seed)
        if queue_size < 1:
            raise ValueError(setting_problem("memory.queue_size", queue_size, "an integer >= 1"))
        if init not in INITS:
            raise ValueError(setting_problem("memory.init", init, f"one of {', '.join(INITS)}"))
        if proxy not in PROXIES:
            raise ValueError(setting_problem("memory.proxy", proxy, f"one of {', '.join(PROXIES)}"))
        self.queue_size, self.init, self.proxy = queue_size, init, proxy
        self.register_buffer("queues", torch.zeros(num_clusters, queue_size, num_features))
        self.register_buffer("ptr", torch.zeros(num_clusters, dtype=torch.long))

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self._check(features, labels, allow_outliers=True)
        features = F.normalize(features.to(self.queues), dim=1)
        labels = labels.to(self.queues.device)
        if self.init in ("centroid", "centroid_normalized"):
            cent = self.cluster_means(features, labels, self.num_clusters)
            if self.init == "centroid_normalized":
                cent = F.normalize(cent, dim=1)
            self.queues.copy_(cent.unsqueeze(1).expand(-1, self.queue_size, -1))
        else:
            keep = torch.nonzero(labels >= 0).squeeze(1)
            order = keep[torch.argsort(labels[keep], stable=True)]  # member indices grouped by cluster
            counts = torch.bincount(labels[keep], minlength=self.num_clusters)
            if bool((counts == 0).any()):
                raise ValueError("memory.reset: every cluster 0..C-1 needs at least one member")
            starts = torch.cumsum(counts, 0) - counts
            u = torch.rand(self.num_clusters, self.queue_size, generator=self.generator()).to(features.device)
            pick = starts[:, None] + (u * counts[:, None]).long().clamp_max(counts[:, None] - 1)
            self.queues.copy_(features[order[pick]])
        self.ptr.zero_()

    def proxies(self) -> torch.Tensor:
        if self.proxy == "mean":
            return F.normalize(self.queues.mean(dim=1), dim=1)
        idx = self.draw_indices(self.queue_size, self.num_clusters)
        return self.queues[torch.arange(self.num_clusters, device=idx.device), idx]

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, max_per_cluster: int | None = None) -> None:
        self._check(features, labels)  # max_per_cluster is not needed: no loop over positions
        features = F.normalize(features.detach().to(self.queues.dtype), dim=1)
        order, ys, counts, rank = self.rank_within_cluster(labels, self.num_clusters)  # batch order kept
        # A cluster with more than queue_size samples in the batch writes some slots several times; the last
        # sample in batch order must win, and a scatter with duplicate indices has no defined winner. So every
        # sample writes the value of the last sample aimed at its slot (same rank modulo queue_size): the
        # duplicates carry equal values. No boolean mask, so no wait on the device for its size.
        q = self.queue_size
        n = counts[ys]
        last = rank + q * torch.div(n - 1 - rank, q, rounding_mode="floor")  # rank of the slot's last writer
        source = order[(torch.cumsum(counts, 0) - counts)[ys] + last]
        slot = (self.ptr[ys] + rank) % q
        self.queues[ys, slot] = features[source]
        self.ptr.add_(counts).remainder_(q)
