"""The random steps of a training transform run on a whole batch, with each image's own draws.

torchvision's random transforms draw one set of parameters per call, so applying them to a stacked batch
gives every image the same flip, crop and colour change: not the per-image distribution the training
recipe specifies. :class:`BatchAugment` keeps the per-image distribution and pays the per-image cost only
for the draws: :meth:`BatchAugment.draw` makes one image's draws with torch's RNG, in the order and by the
code of the per-image ``v2.Compose`` (each transform's own ``make_params``), and :meth:`BatchAugment.apply`
runs each step once on the uint8 batch with those draws. The result is bit for bit the per-image
transform's (tested), so the in-memory loader (:class:`~mqreid.data.loader.CachedBatches`) and the
per-file loader give the same tensors.

The colour kernels are written here because torchvision's ``adjust_brightness/contrast/saturation/hue``
take one factor per call; these take one factor per image (broadcast over the batch) and follow
torchvision's tensor kernels operation for operation, so uint8 results are identical (tested against
``v2.ColorJitter`` per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

BATCHED_STEPS = (v2.RandomHorizontalFlip, v2.Pad, v2.RandomCrop, v2.ColorJitter)


def _luma_floor(images: torch.Tensor) -> torch.Tensor:
    """float32 [B, 1, H, W]: floor of the ITU-R 601 luma of uint8 RGB ``images`` [B, 3, H, W]."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(-3)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """uint8 ``ratio * images + (1 - ratio) * other``, clamped; ``ratio`` float32 [B, 1, 1, 1]."""
    return images.mul(ratio).addcmul_(other, 1.0 - ratio).clamp_(0, 255).to(torch.uint8)


def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return images.mul(factor).clamp_(0, 255).to(torch.uint8)


def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # the mean of integer lumas: the sums are exact in float32 up to 2**24 / 255 pixels, so the per-image
    # mean does not depend on how the batch's reduction is split
    return _blend(images, _luma_floor(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _luma_floor(images), factor)


def hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of uint8 RGB ``images`` [B, 3, H, W] by ``shift`` [B, 1, 1, 1] turns (via HSV)."""
    x = F.to_dtype(images, torch.float32, scale=True)
    r, g, b = x.unbind(dim=-3)
    low, high = torch.minimum(torch.minimum(r, g), b), torch.maximum(torch.maximum(r, g), b)
    grey = high == low                           # no hue: any finite divisor will do
    spread = high - low
    ones = torch.ones_like(high)
    sat = spread / torch.where(grey, ones, high)
    rc, gc, bc = ((high.unsqueeze(-3) - x) / torch.where(grey, ones, spread).unsqueeze(-3)).unbind(dim=-3)
    not_r = high != r
    is_g = high == g
    h = bc.sub(gc).mul_(~not_r)
    h.add_(rc.add(2.0).sub_(bc).mul_(is_g & not_r))
    h.add_(gc.add(4.0).sub_(rc).mul_(not_r & ~is_g))
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0).add_(shift.squeeze(-3)).remainder_(1.0)
    # back to RGB: the sextant i of the hue picks which of (v, p, q, t) each channel takes
    h6 = h.mul(6)
    sextant = torch.floor(h6)
    frac = h6.sub_(sextant)
    sextant = sextant.to(torch.int32).remainder_(6)
    s_frac = sat * frac
    one_minus_s = 1.0 - sat
    q = (1.0 - s_frac).mul_(high).clamp_(0.0, 1.0)
    t = s_frac.add_(one_minus_s).mul_(high).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(high).clamp_(0.0, 1.0)
    vpqt = torch.stack((high, p, q, t), dim=-1)  # [B, H, W, 4]
    pick = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], device=images.device)
    rgb = vpqt.gather(-1, pick[sextant.long()]).permute(0, 3, 1, 2)  # (r, g, b) of sextant 0..5
    return F.to_dtype(rgb, torch.uint8, scale=True)


# ColorJitter's fn_idx numbering: 0 brightness, 1 contrast, 2 saturation, 3 hue
_COLOUR = ((brightness, "brightness_factor"), (contrast, "contrast_factor"), (saturation, "saturation_factor"),
           (hue, "hue_factor"))


class BatchAugment:
    """The random steps of a per-image ``v2.Compose`` on uint8 tensors (flips, pads, random crops, colour
    jitter: :data:`BATCHED_STEPS`), run on a batch [B, 3, H, W] with each image's own draws."""

    def __init__(self, steps: Sequence[torch.nn.Module]) -> None:
        unknown = [type(s).__name__ for s in steps if type(s) not in BATCHED_STEPS]
        if unknown:
            raise ValueError(f"BatchAugment: cannot batch {', '.join(unknown)} (only "
                             f"{', '.join(t.__name__ for t in BATCHED_STEPS)})")
        self.steps = list(steps)
        self._probes: dict[tuple[int, int], list[torch.Tensor]] = {}

    def probes(self, height: int, width: int) -> list[torch.Tensor]:
        """For each step, an empty image of the size it receives from ``height`` x ``width`` images (what a
        step's ``make_params`` reads), computed once per size."""
        if (height, width) not in self._probes:
            probes, probe = [], torch.empty(1, height, width, dtype=torch.uint8)
            for step in self.steps:
                probes.append(probe)
                if isinstance(step, v2.Pad):
                    probe = step(probe)
                elif isinstance(step, v2.RandomCrop):
                    probe = probe.new_empty(1, *step.size)
            self._probes[height, width] = probes
        return self._probes[height, width]

    def draw(self, height: int, width: int) -> list[dict[str, Any]]:
        """One image's draws, step by step: the calls to torch's RNG the per-image Compose makes."""
        draws: list[dict[str, Any]] = []
        for step, probe in zip(self.steps, self.probes(height, width)):
            if isinstance(step, v2.RandomHorizontalFlip):
                # as _RandomApplyTransform.forward: the step is skipped when rand >= p (and draws nothing else)
                draws.append({"apply": bool(torch.rand(1) < step.p)})
            elif isinstance(step, v2.Pad):
                draws.append({})
            else:
                draws.append(step.make_params([probe]))
        return draws

    def apply(self, images: torch.Tensor, draws: Sequence[list[dict[str, Any]]]) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> uint8 [B, 3, H', W'], image i with ``draws[i]`` (from :meth:`draw`)."""
        if len(draws) != len(images):
            raise ValueError(f"BatchAugment.apply: {len(draws)} draws for {len(images)} images")
        if len(images) == 0:
            return images
        for k, step in enumerate(self.steps):
            params = [d[k] for d in draws]
            if isinstance(step, v2.RandomHorizontalFlip):
                flip = torch.tensor([p["apply"] for p in params], dtype=torch.bool)
                if flip.any():
                    images = images.clone()
                    images[flip] = F.horizontal_flip(images[flip])
            elif isinstance(step, v2.Pad):
                images = step(images)
            elif isinstance(step, v2.RandomCrop):
                images = torch.stack([step.transform(image, p) for image, p in zip(images, params)])
            else:
                images = self._colour(images, params)
        return images

    @staticmethod
    def _colour(images: torch.Tensor, params: list[dict[str, Any]]) -> torch.Tensor:
        """ColorJitter with per-image factors and orders: in round r, each image gets its r-th adjustment."""
        images = images.clone(memory_format=torch.contiguous_format)  # written in place below
        order = torch.stack([p["fn_idx"] for p in params])  # [B, 4]
        on = [params[0][name] is not None for _, name in _COLOUR]  # an adjustment is on for all images or none
        factors = torch.tensor([[p[name] if used else 0.0 for (_, name), used in zip(_COLOUR, on)] for p in params],
                               dtype=torch.float32)  # [B, 4]
        for r in range(order.shape[1]):
            for fn_id, (kernel, _) in enumerate(_COLOUR):
                if on[fn_id]:
                    rows = torch.nonzero(order[:, r] == fn_id).flatten()
                    if len(rows):
                        images[rows] = kernel(images[rows], factors[rows, fn_id].view(-1, 1, 1, 1))
        return images
