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
                  batch_size: int, num_workers: int = 0, flip: bool = False, precision: str = "fp32",
                  progress: bool = False, desc: str = "extract", cache: ImageCache | None = None,
                  main_only: bool = False) -> torch.Tensor | None:
    """Features [len(items), D] (float32, on ``device``) of ``items`` under ``transform``, in their order.

    With several processes each rank embeds a contiguous block and the blocks are gathered on the device
    (NCCL on CUDA, gloo on CPU): to every rank, or with ``main_only`` to rank 0 alone (the others get None),
    which is what evaluation needs. Images held by ``cache`` are read from memory and normalised on the
    device (see :func:`build_test_loader`). In one process the features never leave the device.
    """
    device = torch.device(device)
    env = distributed.current_env()
    loader = build_test_loader(items, transform=transform, batch_size=batch_size, num_workers=num_workers,
                               rank=env.rank, world_size=env.world_size, cache=cache, device=device,
                               pin_memory=device.type == "cuda")
    features, indices = extract_features(model, loader, device, flip=flip, precision=precision, progress=progress,
                                         desc=desc)
    comm = device if device.type == "cuda" else torch.device("cpu")  # NCCL needs CUDA tensors, gloo CPU ones
    gather = distributed.gather_cat if main_only else distributed.all_gather_cat
    features, indices = gather(features.to(comm)), gather(indices.to(comm))
    if features is None:
        return None
    out = torch.empty(len(items), features.shape[1], device=device)
    out[indices.to(device)] = features.to(device)
    return out
