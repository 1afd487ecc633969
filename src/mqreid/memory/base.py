"""Base class of the cluster memories: one proxy per pseudo identity, scored against batch features.

A memory is plain tensor math: ``reset`` (re)initialises it from the epoch's clustering, ``forward``
returns the contrastive loss of a batch, and ``update`` writes the batch into the memory. The update is
an explicit call after the optimiser step, never a side effect inside autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterMemory(nn.Module):
    """Holds ``num_clusters`` proxies of dimension ``num_features``; subclasses define the proxies and updates."""

    def __init__(self, num_features: int, num_clusters: int, seed: int = 0) -> None:
        super().__init__()
        if num_features < 1 or num_clusters < 1:
            raise ValueError(f"memory: num_features ({num_features}) and num_clusters ({num_clusters}) must be >= 1")
        self.num_features = num_features
        self.num_clusters = num_clusters
        self.seed = seed
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The memory's own random stream (proxy and member draws), seeded with ``seed`` on first use.

        Draws never touch torch's global RNG, so they do not depend on what else ran (data augmentation,
        the number of processes): every rank of a distributed run draws the same proxies.
        """
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    # -- checks shared by every memory ---------------------------------------------------------------------
    def _check(self, features: torch.Tensor, labels: torch.Tensor, *, allow_outliers: bool = False) -> None:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"memory: features must be [B, {self.num_features}], got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"memory: labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
        if labels.device != features.device:
            raise ValueError(f"memory: features on {features.device} but labels on {labels.device}")
        low = -1 if allow_outliers else 0
        if labels.numel() and (int(labels.min()) < low or int(labels.max()) >= self.num_clusters):
            raise ValueError(f"memory: labels must lie in [{low}, {self.num_clusters - 1}], got "
                             f"[{int(labels.min())}, {int(labels.max())}]")

    @staticmethod
    def cluster_means(features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """Mean feature of each cluster, [C, D], not normalised (outliers, label -1, ignored)."""
        keep = labels >= 0
        sums = torch.zeros(num_clusters, features.shape[1], dtype=features.dtype, device=features.device)
        sums.index_add_(0, labels[keep], features[keep])
        counts = torch.bincount(labels[keep], minlength=num_clusters).clamp_min(1)
        return sums / counts.unsqueeze(1).to(sums.dtype)

    @classmethod
    def centroids(cls, features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """L2-normalised mean feature of each cluster, [C, D] (outliers, label -1, ignored)."""
        return F.normalize(cls.cluster_means(features, labels, num_clusters), dim=1)

    @staticmethod
    def rank_within_cluster(labels: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, ...]:
        """Group a batch by cluster, keeping batch order within a cluster.

        Returns ``order`` [B] (batch positions grouped by label), ``ys`` = labels[order], ``counts`` [C]
        (samples per cluster) and ``rank`` [B] (position of each ``order`` entry within its cluster).
        """
        order = torch.argsort(labels, stable=True)
        ys = labels[order]
        counts = torch.bincount(ys, minlength=num_clusters)
        rank = torch.arange(ys.numel(), device=ys.device) - (torch.cumsum(counts, 0) - counts)[ys]
        return order, ys, counts, rank

    # -- interface -------------------------------------------------------------------------------------------
    def reset(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Initialise from all training features [N, D] and their cluster labels [N] (-1 = outlier)."""
        raise NotImplementedError

    def proxies(self) -> torch.Tensor:
        """The proxy of every cluster for this step, [C, D]."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the (detached, L2-normalised) batch features [B, D] with labels [B] into the memory."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
        """Cross-entropy of ``features @ proxies.T / temperature`` against ``labels``; features [B, D]."""
        self._check(features, labels)
        logits = F.normalize(features, dim=1) @ self.proxies().to(features.dtype).t()
        return F.cross_entropy(logits / temperature, labels)
