"""Train and test image transforms (torchvision.transforms.v2), as in Cluster Contrast.

Both take a PIL image and return a normalised float32 tensor of shape [3, height, width]. Resizing is
bicubic on the PIL image, as in the original (``interpolation=3``); every later step runs on the uint8
tensor, so a batch of cached images can take the same steps at once (:mod:`mqreid.data.augment`). Random
draws use torch's RNG, which the training loader seeds per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from .augment import BATCHED_STEPS, BatchAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(input_cfg: Any) -> dict[str, tuple[float, ...]]:
    """``{"mean": ..., "std": ...}`` of an ``input`` config node (``input.mean``, ``input.std``; a DictConfig or
    a plain dict, e.g. a checkpoint's stored config), ImageNet's where a value is absent (configs and
    checkpoints from before the setting existed). Pass it on as ``build_test_transform(h, w, **norm)``."""
    get = getattr(input_cfg, "get", None)
    mean = get("mean") if get else None
    std = get("std") if get else None
    return {"mean": tuple(float(v) for v in (IMAGENET_MEAN if mean is None else mean)),
            "std": tuple(float(v) for v in (IMAGENET_STD if std is None else std))}


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"image height and width must be positive, got height={height}, width={width}")


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


class RandomErasing(torch.nn.Module):
    """Random erasing (Zhong et al., AAAI 2020) with the original's distributions.

    torchvision's ``RandomErasing`` draws the box's aspect ratio log-uniformly; Cluster Contrast's (and so
    the original multi-queue code's) draws it uniformly in ``[ratio, 1 / ratio]``, which favours tall boxes
    (mean aspect 1.8 against 1.3). With probability ``p``: up to 100 attempts to draw an area fraction
    uniform in ``scale`` and an aspect uniform in ``[ratio, 1/ratio]``; ``h = round(sqrt(area * aspect))``,
    ``w = round(sqrt(area / aspect))``; the first box with h < H and w < W is placed uniformly and filled
    with ``value`` (per channel, in the normalised tensor, as the original).

    Tensor [C, H, W] -> tensor [C, H, W] (a new tensor when erased).
    """

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.4), ratio: float = 0.3,
                 value: Sequence[float] = IMAGENET_MEAN, attempts: int = 100) -> None:
        super().__init__()
        _check_probability("erasing_p", p)
        if not (0 < scale[0] <= scale[1] <= 1) or not 0 < ratio <= 1:
            raise ValueError(f"RandomErasing: expected 0 < scale[0] <= scale[1] <= 1 and 0 < ratio <= 1, got "
                             f"scale={scale}, ratio={ratio}")
        self.p, self.scale, self.ratio, self.attempts = p, tuple(scale), ratio, attempts
        self.value = torch.tensor(list(value), dtype=torch.float32)

    def box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Draw ``(top, left, h, w)`` for an image of ``height`` x ``width``, or None if no attempt fits."""
        area = height * width
        for _ in range(self.attempts):
            target = area * torch.empty(()).uniform_(*self.scale).item()
            aspect = torch.empty(()).uniform_(self.ratio, 1 / self.ratio).item()
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                return top, left, h, w
        return None

    def draw(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """All of one image's draws: whether to erase (probability ``p``), then :meth:`box`."""
        if torch.rand(()).item() >= self.p:
            return None
        return self.box(height, width)

    def erase(self, image: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
        """``image`` with ``box`` (from :meth:`draw`) filled with ``value``; ``image`` itself when None."""
        if box is None:
            return image
        top, left, h, w = box
        out = image.clone()
        out[..., top:top + h, left:left + w] = self.value.to(out)[:, None, None]
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.erase(image, self.draw(image.shape[-2], image.shape[-1]))


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

    ``color_jitter`` = c > 0 adds ``ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c/4, 0.5))``,
    applied (like the flip, pad and crop) to the uint8 tensor: torchvision's tensor kernels.
    Random erasing (:class:`RandomErasing`) has the original's area and aspect distributions and fills the
    erased box with ``mean`` in the normalised tensor, like the original.
    PIL image -> float32 tensor [3, height, width].
    """
    _check_size(height, width)
    _check_probability("flip_p", flip_p)
    _check_probability("erasing_p", erasing_p)
    if pad < 0 or color_jitter < 0:
        raise ValueError(f"pad and color_jitter must be >= 0, got pad={pad}, color_jitter={color_jitter}")
    steps: list[torch.nn.Module] = [v2.Resize((height, width), interpolation=InterpolationMode.BICUBIC), v2.ToImage()]
    if flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_p))
    if pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    if color_jitter > 0:
        c = color_jitter
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if erasing_p > 0:
        steps.append(RandomErasing(p=erasing_p, value=mean))
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


@dataclass(frozen=True)
class Stages:
    """A transform of :func:`build_train_transform` or :func:`build_test_transform`, cut in four.

    ``resize`` is deterministic, so its output may be computed once and kept (an image cache);
    ``per_sample`` holds the random steps on the uint8 tensor after ``ToImage`` (flip, pad + crop, colour
    jitter; None if there are none), and ``batched`` the same steps for a whole batch with per-image draws
    (None when one of them cannot be batched: then run ``per_sample`` image by image);
    ``to_tensor`` (ToDtype to float32 with scaling, Normalize) works element by element, so it gives the same
    values on a stacked batch as on each image (:func:`~mqreid.data.loader.finish_batch` computes it on the
    device); ``erasing`` (or None) draws per image with :meth:`RandomErasing.draw`.
    Run in this order with the same draws, the stages compute exactly what the whole transform does.
    """

    resize: v2.Resize
    per_sample: v2.Compose | None
    batched: BatchAugment | None
    to_tensor: v2.Compose
    erasing: RandomErasing | None


def split_stages(transform) -> Stages | None:
    """The :class:`Stages` of a transform built by this module, or None for any other transform."""
    steps = list(transform.transforms) if isinstance(transform, v2.Compose) else []
    kinds = [type(step) for step in steps]
    if kinds[:2] != [v2.Resize, v2.ToImage] or v2.ToDtype not in kinds:
        return None
    k = kinds.index(v2.ToDtype)
    tail = steps[k + 2:]
    if kinds[k:k + 2] != [v2.ToDtype, v2.Normalize] or len(tail) > 1 or \
            (tail and not isinstance(tail[0], RandomErasing)):
        return None
    if steps[k].dtype != torch.float32 or not steps[k].scale:  # what finish_batch computes on the device
        return None
    random = steps[2:k]
    batched = BatchAugment(random) if random and all(type(s) in BATCHED_STEPS for s in random) else None
    return Stages(steps[0], v2.Compose(random) if random else None, batched, v2.Compose(steps[k:k + 2]),
                  tail[0] if tail else None)
