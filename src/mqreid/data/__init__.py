"""Datasets, transforms, samplers and loaders."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetError, ImageItem, ReIDDataset
from .custom import Custom
from .dukemtmcreid import DukeMTMCreID
from .loader import ImageDataset, ImageReadError, build_test_loader, build_train_loader
from .market1501 import Market1501
from .msmt17 import MSMT17
from .personx import PersonX
from .sampler import SAMPLERS, CameraRoundRobinSampler, RandomMultipleGallerySampler
from .transforms import build_test_transform, build_train_transform
from .veri import VeRi

DATASETS: dict[str, type[ReIDDataset] | None] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "msmt17": MSMT17,
    "personx": PersonX,
    "veri": VeRi,
    "custom": Custom,
    "synthetic": None,  # imported on first use, see build_dataset
}


def build_dataset(name: str, root: str | Path, verbose: bool = True, **kwargs) -> ReIDDataset:
    """Build the dataset ``name`` (one of :data:`DATASETS`) from the data folder ``root``.

    ``kwargs`` go to the dataset class (e.g. ``csv=`` for ``custom``, generator options for ``synthetic``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name == "synthetic":
        from .synthetic import Synthetic  # imported on use: the parsers do not depend on the generator

        return Synthetic(root, verbose=verbose, **kwargs)
    return DATASETS[name](root, verbose=verbose, **kwargs)


__all__ = [
    "DATASETS", "Custom", "DatasetError", "DukeMTMCreID", "ImageDataset", "ImageItem", "ImageReadError", "MSMT17",
    "Market1501", "SAMPLERS", "CameraRoundRobinSampler", "RandomMultipleGallerySampler", "PersonX", "ReIDDataset", "VeRi", "build_dataset", "build_test_loader",
    "build_test_transform", "build_train_loader", "build_train_transform",
]
