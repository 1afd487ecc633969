"""Camera-aware feature correction applied before clustering."""

from __future__ import annotations

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
