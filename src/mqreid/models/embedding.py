"""The re-ID embedding model: trunk -> pooling -> BN neck -> L2-normalised embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_trunk


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al., 2018) with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


POOLINGS = ("gem", "avg", "max")


class EmbeddingNet(nn.Module):
    """Embedding network. ``forward`` returns L2-normalised embeddings [B, D] in train and eval mode."""

    def __init__(self, trunk: nn.Module, channels: int, *, pooling: str = "gem", neck: bool = True) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"backbone.pooling={pooling}: expected one of {', '.join(POOLINGS)}")
        self.trunk = trunk
        self.pool = GeM() if pooling == "gem" else (nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1))
        self.neck = nn.BatchNorm1d(channels) if neck else nn.Identity()
        if neck:  # BNNeck (Luo et al., 2019): no shift, so the embedding stays centred
            self.neck.bias.requires_grad_(False)
            nn.init.ones_(self.neck.weight)
            nn.init.zeros_(self.neck.bias)
        self.embedding_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.trunk(x)).flatten(1)
        return F.normalize(self.neck(f), dim=1)


def build_model(arch: str = "resnet50", *, pretrained: bool | str = False, last_stride: int = 1,
                pooling: str = "gem", neck: bool = True, widths: list[int] | None = None) -> EmbeddingNet:
    """Build the embedding model from the ``backbone`` config group."""
    trunk, channels = build_trunk(arch, pretrained=pretrained, last_stride=last_stride,
                                  widths=tuple(widths) if widths is not None else None)
    return EmbeddingNet(trunk, channels, pooling=pooling, neck=neck)
