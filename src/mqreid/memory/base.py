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

    def generator(self) -> torch.Generator:
        """The memory's own random stream (proxy and member draws), seeded with ``seed`` on first use.

        Draws never touch torch's global RNG, so they do not depend on what else ran (data augmentation,
        the number of processes): every rank of a distributed run draws the same proxies. The stream is a
        CPU generator whatever the device, so a CUDA run draws exactly what the CPU run with the same seed
        draws (a CUDA generator gives other numbers); the draws are made in blocks and copied to the device
        once per block (:meth:`draw_indices`).
        """
        if self._generator is None:
            self._generator = torch.Generator()
            self._generator.manual_seed(self.seed)
        return self._generator

    # -- checks shared by every memory ---------------------------------------------------------------------
    def _check(self, features: torch.Tensor, labels: torch.Tensor, *, allow_outliers: bool = False) -> None:
        """Shapes and devices always; the label range only for labels on the CPU, where reading it costs
        nothing (on an accelerator it would wait for the device at every step: the trainer checks each batch's
        labels on the host before copying them)."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"memory: features must be [B, {self.num_features}], got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"memory: labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
        if labels.device != features.device:
            raise ValueError(f"memory: features on {features.device} but labels on {labels.device}")
        low = -1 if allow_outliers else 0
        if labels.device.type != "cpu":
            return
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

    @staticmethod
    def counts_of(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """Samples per cluster [C] of labels in [0, C): a scatter-add, which (unlike ``bincount``, whose output
        size depends on the values) needs no wait on the device."""
        return torch.zeros(num_clusters, dtype=torch.long, device=labels.device).index_add_(
            0, labels, torch.ones_like(labels))

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
        counts = ClusterMemory.counts_of(ys, num_clusters)
        rank = torch.arange(ys.numel(), device=ys.device) - (torch.cumsum(counts, 0) - counts)[ys]
        return order, ys, counts, rank

    def draw_indices(self, high: int, count: int) -> torch.Tensor:
        """``count`` integers in [0, high) from the memory's stream, on the memory's device. Drawn on the CPU
        ``DRAW_BLOCK`` rows at a time and copied once per block, so a step costs no transfer."""
        key = (high, count)
        if getattr(self, "_block_key", None) != key or self._block_pos >= len(self._block):
            block = torch.randint(high, (self.DRAW_BLOCK, count), generator=self.generator())
            device = self.device_of_state()
            self._block = block.pin_memory().to(device, non_blocking=True) if device.type == "cuda" \
                else block.to(device)
            self._block_key, self._block_pos = key, 0
        row = self._block[self._block_pos]
        self._block_pos += 1
        return row

    DRAW_BLOCK = 256

    def device_of_state(self) -> torch.device:
        """The device the memory's buffers live on."""
        return next(self.buffers()).device

    # -- interface -------------------------------------------------------------------------------------------
    def reset(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Initialise from all training features [N, D] and their cluster labels [N] (-1 = outlier)."""
        raise NotImplementedError

    def proxies(self) -> torch.Tensor:
        """The proxy of every cluster for this step, [C, D]."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, max_per_cluster: int | None = None) -> None:
        """Write the (detached, L2-normalised) batch features [B, D] with labels [B] into the memory.

        ``max_per_cluster``: an upper bound, known on the host, of the samples any cluster has in the batch;
        a memory that needs it (the centroid memory's per-sample recursion) otherwise reads it from the
        device, which waits for the device."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
        """Cross-entropy of ``features @ proxies.T / temperature`` against ``labels``; features [B, D]."""
        self._check(features, labels)
        logits = F.normalize(features, dim=1) @ self.proxies().to(features.dtype).t()
        return cross_entropy(logits / temperature, labels)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [B, C] against ``labels`` [B], as log-softmax + gather: the value of
    ``F.cross_entropy``, with kernels that ``torch.use_deterministic_algorithms`` accepts on CUDA (it refuses
    ``nll_loss``, which ``F.cross_entropy`` calls). Every loss of a deterministic run goes through it."""
    return -F.log_softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).mean()
