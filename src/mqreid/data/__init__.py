"""Datasets, transforms, samplers and loaders."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetError, ImageItem, ReIDDataset
from .custom import Custom
from .dukemtmcreid import DukeMTMCreID
from .image_check import check_policy
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
# The synthetic generator at the real datasets' sizes, its hard variant and the v2 sets (classes in
# mqreid.data.synthetic, imported on first use).
SYNTHETIC_SIZED = ("synthetic_market", "synthetic_msmt17", "synthetic_hard", "synthetic_v2", "synthetic_v2_hard")


def build_dataset(name: str, root: str | Path, verbose: bool = True, on_bad_image: str = "error",
                  **kwargs) -> ReIDDataset:
    """Build the dataset ``name`` (one of :data:`DATASETS` or :data:`SYNTHETIC_SIZED`) from the data folder ``root``.

    Every image file is checked as the dataset is built: ``on_bad_image="error"`` raises one
    :class:`DatasetError` naming every unreadable file, ``"skip"`` leaves them out with a warning.
    ``kwargs`` go to the dataset class (e.g. ``csv=`` for ``custom``, generator options for ``synthetic``).
    """
    if name not in DATASETS and name not in SYNTHETIC_SIZED:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join([*DATASETS, *SYNTHETIC_SIZED])}")
    check_policy(on_bad_image)
    if name == "synthetic" or name in SYNTHETIC_SIZED:
        from .synthetic import SYNTHETIC_SETS  # imported on use: the parsers do not depend on the generator

        return SYNTHETIC_SETS[name](root, verbose=verbose, on_bad_image=on_bad_image, **kwargs)
    return DATASETS[name](root, verbose=verbose, on_bad_image=on_bad_image, **kwargs)


__all__ = [
    "DATASETS", "Custom", "DatasetError", "DukeMTMCreID", "ImageDataset", "ImageItem", "ImageReadError", "MSMT17",
    "Market1501", "SAMPLERS", "CameraRoundRobinSampler", "RandomMultipleGallerySampler", "PersonX", "ReIDDataset", "SYNTHETIC_SIZED", "VeRi", "build_dataset", "build_test_loader",
    "build_test_transform", "build_train_loader", "build_train_transform",
]
