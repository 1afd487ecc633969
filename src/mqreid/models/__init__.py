"""Backbones, pooling and the embedding head."""

from .backbones import ARCHS, IBN, SmallCNN, build_trunk, load_pretrained
from .embedding import EmbeddingNet, GeM, build_model
from .vit import VIT_ARCHS, ViTEmbeddingNet, build_vit

__all__ = ["ARCHS", "IBN", "SmallCNN", "build_trunk", "load_pretrained", "EmbeddingNet", "GeM", "build_model",
           "VIT_ARCHS", "ViTEmbeddingNet", "build_vit"]
