"""Camera-aware proxies (CAP; Wang et al., AAAI 2021, "Camera-aware Proxies for Unsupervised Person
Re-Identification"): one proxy per (cluster, camera) pair, and two loss terms that add to the cluster memory's.

- intra-camera: cross-entropy of a sample against the proxies of its own camera (one per cluster seen there),
  the target being its own (cluster, camera) proxy;
- inter-camera: the positives are all proxies of the sample's cluster (every camera it was seen in), the
  negatives the ``hard_negatives`` proxies of other clusters most similar to the sample; the target is uniform
  over the positives.

Each term is, for every camera in the batch, the mean over that camera's samples, summed over the cameras
(as the authors compute it: a loop over the batch's cameras adding each camera's mean). Proxies are the
normalised means of their members at every clustering and move after each step by the per-sample momentum
update of :class:`~mqreid.memory.CentroidMemory` (``p <- normalise(m p + (1 - m) x)`` in batch order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mqreid.utils.errors import SettingError

from .centroid import CentroidMemory
from .multi_queue import MultiQueueMemory

# Defaults from the authors' code (Terminator8758/CAP-master):
TEMPERATURE = 0.07       # train_cap.py --inv_beta 0.07, the temperature of both terms
MOMENTUM = 0.2           # train_cap.py --inv_alpha 0.2, proxy <- 0.2 proxy + 0.8 x, re-normalised per sample
HARD_NEGATIVES = 50      # CAPMemory(bg_knn=50): negatives of the inter-camera term
INTER_WEIGHT = 0.5       # CAPMemory: loss += 0.5 * inter-camera term
INTER_START_EPOCH = 5    # CAPMemory(crosscam_epoch=5): the inter-camera term from epoch 5, counted from 0
INTRA_WEIGHT = 1.0       # CAPMemory: the intra-camera term is added unweighted


def _per_camera_mean_sum(values: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """``sum over cameras c in the batch of mean(values[cameras == c])``, without a data-dependent size:
    each sample is weighted by one over its camera's count in the batch."""
    counts = (cameras[:, None] == cameras[None, :]).sum(1)
    return (values / counts.to(values.dtype)).sum()


def camera_proxy_losses(features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor,
                        proxies: torch.Tensor, proxy_labels: torch.Tensor, proxy_cameras: torch.Tensor,
                        temperature: float = TEMPERATURE,
                        hard_negatives: int = HARD_NEGATIVES) -> tuple[torch.Tensor, torch.Tensor]:
    """The intra- and inter-camera losses of a batch (two scalars).

    Args:
        features: [B, D] batch features (L2-normalised here).
        labels: [B] cluster of each sample (>= 0).
        cameras: [B] camera of each sample.
        proxies: [P, D] unit proxies (not differentiated).
        proxy_labels, proxy_cameras: [P] the (cluster, camera) pair of each proxy; every (labels[b],
            cameras[b]) pair of the batch must have a proxy.
        temperature: divisor of the cosine similarities.
        hard_negatives: proxies of other clusters kept as negatives of the inter-camera term (the most
            similar to the sample; all of them when there are fewer).

    Returns:
        ``(intra, inter)``: each the sum over the batch's cameras of the mean over that camera's samples.
    """
    if features.ndim != 2 or proxies.ndim != 2 or features.shape[1] != proxies.shape[1]:
        raise ValueError(f"camera proxies: expected features [B, D] and proxies [P, D], got {tuple(features.shape)} "
                         f"and {tuple(proxies.shape)}")
    b, p = features.shape[0], proxies.shape[0]
    for name, t, size in (("labels", labels, b), ("cameras", cameras, b), ("proxy_labels", proxy_labels, p),
                          ("proxy_cameras", proxy_cameras, p)):
        if t.shape != (size,):
            raise ValueError(f"camera proxies: expected {name} of shape ({size},), got {tuple(t.shape)}")
    if not isinstance(hard_negatives, int) or hard_negatives < 0:
        raise SettingError("hard_negatives", hard_negatives, "an integer >= 0")
    intra, inter = _camera_terms(features, labels, cameras, proxies, proxy_labels, proxy_cameras, temperature,
                                 hard_negatives)
    return intra, inter


def _camera_terms(features, labels, cameras, proxies, proxy_labels, proxy_cameras, temperature: float,
                  hard_negatives: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`camera_proxy_losses` without the checks; ``hard_negatives=None`` skips the inter-camera term."""
    logits = F.normalize(features, dim=1) @ proxies.detach().to(features.dtype).t() / temperature  # [B, P]
    same_cluster = labels[:, None] == proxy_labels[None, :]
    same_camera = cameras[:, None] == proxy_cameras[None, :]
    # intra-camera: softmax over the own camera's proxies, the own (cluster, camera) proxy as target
    log_p = F.log_softmax(logits.masked_fill(~same_camera, float("-inf")), dim=1)
    own = same_cluster & same_camera  # one proxy per row
    intra = -torch.where(own, log_p, torch.zeros_like(log_p)).sum(1)
    if hard_negatives is None:
        return _per_camera_mean_sum(intra, cameras), None
    p = proxies.shape[0]
    # inter-camera: all proxies of the cluster against the hardest proxies of other clusters
    k = min(hard_negatives, p)
    hardest = logits.detach().masked_fill(same_cluster, float("-inf")).topk(k, dim=1).indices
    chosen = torch.zeros_like(same_cluster).scatter_(1, hardest, True) & ~same_cluster  # fewer than k: no positive
    chosen |= same_cluster
    log_z = torch.logsumexp(logits.masked_fill(~chosen, float("-inf")), dim=1)
    positives = same_cluster.sum(1).clamp_min(1).to(logits.dtype)
    inter = log_z - torch.where(same_cluster, logits, torch.zeros_like(logits)).sum(1) / positives
    return _per_camera_mean_sum(intra, cameras), _per_camera_mean_sum(inter, cameras)


class CameraProxies(nn.Module):
    """The camera-aware proxies of one epoch and their losses (``camera=proxies``).

    Built with ``_partial_`` from the config, then :meth:`reset` from the epoch's clustering; :meth:`forward`
    gives ``(intra, inter)`` of a batch and :meth:`update` moves the proxies after the optimiser step.
    The weights and the inter-camera term's first epoch are applied by the trainer.

    Args:
        num_features: feature dimension.
        temperature, momentum, hard_negatives, intra_weight, inter_weight, inter_start_epoch: see the module
            constants (the authors' values).
        queue_size: ``None``, CAP's momentum proxies; an integer, a ring buffer of that many recent features per
            (cluster, camera) pair instead, one random entry of which is the pair's proxy at each step (the
            multi-queue memory's idea applied to the camera proxies; no published method has it).
    """

    def __init__(self, num_features: int, temperature: float = TEMPERATURE, momentum: float = MOMENTUM,
                 hard_negatives: int = HARD_NEGATIVES, intra_weight: float = INTRA_WEIGHT,
                 inter_weight: float = INTER_WEIGHT, inter_start_epoch: int = INTER_START_EPOCH,
                 queue_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        for name, value in (("temperature", temperature), ("intra_weight", intra_weight),
                            ("inter_weight", inter_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or (name == "temperature" and value == 0):
                raise SettingError(name, value, f"a number {'> 0' if name == 'temperature' else '>= 0'}")
        for name, value in (("hard_negatives", hard_negatives), ("inter_start_epoch", inter_start_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingError(name, value, "an integer >= 0")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise SettingError("momentum", momentum, "a number in [0, 1]")
        if queue_size is not None and (isinstance(queue_size, bool) or not isinstance(queue_size, int)
                                       or queue_size < 1):
            raise SettingError("queue_size", queue_size, "null (momentum proxies) or an integer >= 1")
        self.queue_size = queue_size
        self.num_features = num_features
        self.temperature, self.momentum, self.hard_negatives = float(temperature), float(momentum), hard_negatives
        self.intra_weight, self.inter_weight = float(intra_weight), float(inter_weight)
        self.inter_start_epoch = inter_start_epoch
        self.seed = seed
        self.memory: CentroidMemory | MultiQueueMemory | None = None
        self.register_buffer("proxy_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proxy_cameras", torch.zeros(0, dtype=torch.long))
        self.register_buffer("table", torch.zeros(0, 0, dtype=torch.long))   # [C, slots] -> proxy index, -1
        self.register_buffer("slot_of", torch.zeros(0, dtype=torch.long))    # camera id -> slot, -1

    @property
    def num_proxies(self) -> int:
        return len(self.proxy_labels)

    def inter_active(self, epoch: int) -> bool:
        """Whether the inter-camera term counts at ``epoch`` (0-based, as the authors count)."""
        return epoch >= self.inter_start_epoch

    @torch.no_grad()
    def reset(self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor) -> None:
        """Proxies of every (cluster, camera) pair with members: their normalised mean feature.

        ``features`` [N, D], ``labels`` [N] (-1 = outlier, left out), ``cameras`` [N] integer ids >= 0.
        Proxies are ordered by cluster, then camera."""
        if features.ndim != 2 or labels.shape != features.shape[:1] or cameras.shape != features.shape[:1]:
            raise ValueError(f"camera proxies: expected features [N, D], labels [N] and cameras [N], got "
                             f"{tuple(features.shape)}, {tuple(labels.shape)}, {tuple(cameras.shape)}")
        device = self.proxy_labels.device
        labels, cameras = labels.to(device, torch.long), cameras.to(device, torch.long)
        if cameras.numel() and int(cameras.min()) < 0:
            raise ValueError("camera proxies: expected camera ids >= 0")
        keep = labels >= 0
        cam_ids = torch.unique(cameras[keep])
        slot_of = torch.full((int(cameras.max()) + 1 if cameras.numel() else 1,), -1, dtype=torch.long, device=device)
        slot_of[cam_ids] = torch.arange(len(cam_ids), device=device)
        num_clusters = int(labels.max()) + 1 if keep.any() else 0
        pair = labels[keep] * len(cam_ids) + slot_of[cameras[keep]]
        pairs = torch.unique(pair)  # sorted: by cluster, then camera
        table = torch.full((num_clusters * len(cam_ids),), -1, dtype=torch.long, device=device)
        table[pairs] = torch.arange(len(pairs), device=device)
        self.proxy_labels = pairs // max(1, len(cam_ids))
        self.proxy_cameras = cam_ids[pairs % max(1, len(cam_ids))] if len(cam_ids) else pairs
        self.table = table.view(num_clusters, len(cam_ids))
        self.slot_of = slot_of
        if self.queue_size is None:
            self.memory = CentroidMemory(features.shape[1], max(1, len(pairs)), momentum=self.momentum,
                                         seed=self.seed).to(device)
        else:  # a queue per (cluster, camera) pair, starting as its normalised mean; a random entry per step
            self.memory = MultiQueueMemory(features.shape[1], max(1, len(pairs)), queue_size=self.queue_size,
                                           init="centroid_normalized", proxy="random", seed=self.seed).to(device)
        index = torch.full_like(labels, -1)
        index[keep] = table[pair]
        self.memory.reset(features.to(device), index)

    def proxy_index(self, labels: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """[B] the proxy of each (cluster, camera) pair of a batch (gathers only: no wait on the device)."""
        return self.table[labels, self.slot_of[cameras]]

    def proxies(self) -> torch.Tensor:
        """[P, D] the current proxies (with queues: one random entry of each, drawn at every call)."""
        if self.memory is None:
            raise RuntimeError("camera proxies: reset() with the epoch's clustering first")
        return self.memory.proxies()

    def forward(self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor,
                inter: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(intra, inter)`` of a batch (see :func:`camera_proxy_losses`); ``inter=False`` skips the
        inter-camera term (``None``)."""
        if features.ndim != 2 or labels.shape != features.shape[:1] or cameras.shape != features.shape[:1]:
            raise ValueError(f"camera proxies: expected features [B, D], labels [B] and cameras [B], got "
                             f"{tuple(features.shape)}, {tuple(labels.shape)}, {tuple(cameras.shape)}")
        return _camera_terms(features, labels, cameras, self.proxies(), self.proxy_labels, self.proxy_cameras,
                             self.temperature, self.hard_negatives if inter else None)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, cameras: torch.Tensor,
               max_per_cluster: int | None = None) -> None:
        """Move each sample's (cluster, camera) proxy towards it, in batch order. ``max_per_cluster``: a
        host-side bound of any cluster's samples in the batch (it bounds every proxy's too)."""
        if self.memory is None:
            raise RuntimeError("camera proxies: reset() with the epoch's clustering first")
        self.memory.update(features, self.proxy_index(labels, cameras), max_per_cluster)
