"""Train and test image transforms (torchvision.transforms.v2), as in Cluster Contrast.

Both take a PIL image and return a normalised float32 tensor of shape [3, height, width]. Resizing is
bicubic, as in the original (``interpolation=3``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def build_train_transform(
    height: int,
    width: int,
    *,
    flip_p: float = 0.5,
    pad: int = 10,
    erasing_p: float = 0.5,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize, random flip, pad + random crop, optional colour jitter, normalise, random erasing.

    ``color_jitter`` = c > 0 adds ``ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c/4, 0.5))``.
    Random erasing fills the erased box with ``mean`` in the normalised tensor, like the original.
    PIL image -> float32 tensor [3, height, width].
    """
    _check_size(height, width)
    _check_probability("flip_p", flip_p)
    _check_probability("erasing_p", erasing_p)
    if pad < 0 or color_jitter < 0:
        raise ValueError(f"pad and color_jitter must be >= 0, got pad={pad}, color_jitter={color_jitter}")
    steps: list[torch.nn.Module] = [v2.Resize((height, width), interpolation=InterpolationMode.BICUBIC)]
    if flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_p))
    if pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    if color_jitter > 0:
        c = color_jitter
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5)))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if erasing_p > 0:
        # Box area 2-40% and aspect 0.3-3.3 of the original's own RandomErasing (torchvision's default area is 2-33%).
        steps.append(v2.RandomErasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=list(mean)))
    return v2.Compose(steps)


def build_test_transform(
    height: int, width: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Resize and normalise: PIL image -> float32 tensor [3, height, width]."""
    _check_size(height, width)
    return v2.Compose([
        v2.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])
