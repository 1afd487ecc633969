"""Camera-aware feature correction applied before clustering."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def camera_centering(features: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
    """Subtract each camera's mean feature and re-normalise.

    Removes the per-camera offset that otherwise makes clusters follow cameras instead of identities.

    Args:
        features: [N, D] embeddings.
        camids: [N] camera of each embedding (any integers).

    Returns:
        [N, D] L2-normalised, camera-centred features (a new tensor).
    """
    if features.ndim != 2 or camids.shape != features.shape[:1]:
        raise ValueError(f"camera_centering: expected features [N, D] and camids [N], got "
                         f"{tuple(features.shape)} and {tuple(camids.shape)}")
    camids = camids.to(features.device)
    out = features.clone()
    for c in torch.unique(camids):
        sel = camids == c
        out[sel] -= out[sel].mean(0, keepdim=True)
    return F.normalize(out, dim=1)


def permute_cameras(camids: np.ndarray, seed: int) -> np.ndarray:
    """One uniform random permutation of the images' camera ids (the placebo of docs/benchmark-v2.md).

    The ids are shuffled across images, not renamed: each "camera" keeps its number of images but no longer
    holds one camera's images, so centring with them removes no camera effect. (Renaming the cameras would
    leave centring unchanged.) Deterministic in ``seed`` (numpy's default generator).

    Args:
        camids: [N] camera of each image (any integers).
        seed: an integer >= 0.

    Returns:
        [N] the same ids in a permuted order (a new array).
    """
    camids = np.asarray(camids)
    if camids.ndim != 1:
        raise ValueError(f"permute_cameras: expected camids [N], got shape {camids.shape}")
    return np.random.default_rng(seed).permutation(camids)
