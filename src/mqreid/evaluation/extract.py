"""Feature extraction: embed every image of a loader with a model in eval mode."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mqreid.models.precision import autocast

__all__ = ["extract_features"]


def extract_features(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    *,
    flip: bool = False,
    precision: str = "fp32",
    normalize: bool = True,
    progress: bool = True,
    desc: str = "extract",
) -> tuple[Tensor, Tensor]:
    """Embed all images of ``loader`` with ``model`` and return features and dataset indices.

    Args:
        model: maps images [B, C, H, W] to embeddings [B, D] in eval mode.
        loader: yields batches ``(images, pids, camids, indices)``; only images and indices are used.
        device: where the model runs (the model is expected to be there already).
        flip: average the embeddings of each image and its horizontal flip.
        precision: ``fp32``, ``bf16`` or ``fp16`` (:mod:`mqreid.models.precision`): autocast by device type.
        normalize: L2-normalise the (flip-averaged) embeddings.
        progress: show a tqdm progress bar; desc: its label.

    Returns:
        features: [n, D] float32 on ``device``, in loader order (one copy at the end, never one per batch).
        indices: [n] int64, the 4th field of each batch, so ``features[i]`` belongs to item
        ``indices[i]`` of the dataset whatever the sampler order.

    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    feats, idxs = [], []
    try:
        with torch.inference_mode(), autocast(device, precision):
            for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
                if not isinstance(batch, (tuple, list)) or len(batch) != 4:
                    raise ValueError(
                        "extract_features: each batch must be (images, pids, camids, indices); "
                        f"got {type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}"
                    )
                images, _, _, indices = batch
                images = images.to(device, non_blocking=True)
                out = _embed(model, images)
                if flip:
                    out = (out + _embed(model, torch.flip(images, dims=[3]))) / 2
                if normalize:
                    out = F.normalize(out, dim=1)
                feats.append(out)  # stays on the device: no wait on the host per batch
                idxs.append(torch.as_tensor(indices, dtype=torch.int64).reshape(-1))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batch")
    return torch.cat(feats).float(), torch.cat(idxs).to(device)


def _embed(model: nn.Module, images: Tensor) -> Tensor:
    out = model(images)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"extract_features: the model must return embeddings [B, D] in eval mode; got {shape}")
    # float32 before summing/normalising so autocast's float16 output keeps full precision.
    return out.float()
