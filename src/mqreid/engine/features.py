"""Embeddings of a list of images, sharded across processes and reassembled in order."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from mqreid.data.base import ImageItem
from mqreid.data.loader import ImageCache, build_test_loader
from mqreid.evaluation import extract_features

from . import distributed


def extract_items(model: nn.Module, items: Sequence[ImageItem], transform: Callable, device: torch.device, *,
                  batch_size: int, num_workers: int = 0, flip: bool = False, amp: bool = False,
                  progress: bool = False, desc: str = "extract", cache: ImageCache | None = None) -> torch.Tensor:
    """Features [len(items), D] (float32, CPU) of ``items`` under ``transform``, in the order of ``items``.

    With several processes each rank embeds a contiguous block and the blocks are gathered, so every rank
    returns the whole matrix. Images held by ``cache`` are read from memory (see :func:`build_test_loader`).
    """
    env = distributed.current_env()
    loader = build_test_loader(items, transform=transform, batch_size=batch_size, num_workers=num_workers,
                               rank=env.rank, world_size=env.world_size, cache=cache)
    features, indices = extract_features(model, loader, device, flip=flip, amp=amp, progress=progress, desc=desc)
    comm = device if device.type == "cuda" else torch.device("cpu")  # NCCL needs CUDA tensors, gloo CPU ones
    features = distributed.all_gather_cat(features.to(comm)).cpu()
    indices = distributed.all_gather_cat(indices.to(comm)).cpu()
    out = torch.empty(len(items), features.shape[1])
    out[indices] = features
    return out
