"""Backbones, pooling and the embedding head."""

from .backbones import ARCHS, IBN, SmallCNN, build_trunk, load_pretrained
from .embedding import EmbeddingNet, GeM, build_model

__all__ = ["ARCHS", "IBN", "SmallCNN", "build_trunk", "load_pretrained", "EmbeddingNet", "GeM", "build_model"]
