"""Batched augmentation with per-image draws (mqreid.data.augment) against torchvision's per-image transforms."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mqreid.data.augment import BatchAugment, brightness, contrast, hue, saturation
from mqreid.data.transforms import build_train_transform, split_stages


def images(n: int = 96, height: int = 24, width: int = 12, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, H, W] with the cases the kernels branch on: grey pixels, saturated and dark images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=g)
    x[:8] = x[:8, :1]                   # grey: max == min in every pixel
    x[8:12] = x[8:12].clamp(200, 255)   # bright
    x[12:16] = x[12:16] // 8            # dark
    x[16:20, 1] = x[16:20, 0]           # r == g: the hue's tie rules
    return x


@pytest.mark.parametrize("kernel,reference,low,high", [
    (brightness, F.adjust_brightness, 0.2, 1.8),
    (contrast, F.adjust_contrast, 0.0, 2.0),
    (saturation, F.adjust_saturation, 0.0, 2.0),
    (hue, F.adjust_hue, -0.5, 0.5),
])
def test_colour_kernels_are_torchvisions_with_one_factor_per_image(kernel, reference, low, high) -> None:
    x = images()
    factors = torch.empty(len(x)).uniform_(low, high, generator=torch.Generator().manual_seed(1))
    want = torch.stack([reference(image, float(f)) for image, f in zip(x, factors)])
    got = kernel(x, factors.view(-1, 1, 1, 1))
    assert got.dtype == torch.uint8 and torch.equal(got, want)


@pytest.mark.parametrize("jitter", [0.0, 0.4, 0.8])
def test_a_batch_gets_each_images_own_transform_bit_for_bit(jitter: float) -> None:
    """Seeded per image, the batched steps give exactly what the per-image v2.Compose gives: the same draws
    (flip, crop offsets, jitter order and factors) and the same pixels."""
    stages = split_stages(build_train_transform(24, 12, pad=3, color_jitter=jitter))
    assert stages.batched is not None
    x = images()
    want, draws = [], []
    for i, image in enumerate(x):
        torch.default_generator.manual_seed(1000 + i)
        want.append(stages.per_sample(image))
        next_draw = torch.rand(())
        torch.default_generator.manual_seed(1000 + i)
        draws.append(stages.batched.draw(24, 12))
        assert torch.rand(()) == next_draw  # as many draws: the erasing draws that follow are the same too
    got = stages.batched.apply(x, draws)
    assert torch.equal(got, torch.stack(want))
    assert not torch.equal(got, x)  # something happened: flips and crops at least
    # per-image draws, not one per batch: the images were cropped at several offsets
    offsets = {(d[2]["top"], d[2]["left"]) for d in draws}
    assert len(offsets) > 10


def test_the_input_batch_is_left_as_it_was() -> None:
    stages = split_stages(build_train_transform(24, 12, color_jitter=0.4))
    x = images(8)
    before = x.clone()
    draws = []
    for i in range(len(x)):
        torch.default_generator.manual_seed(i)
        draws.append(stages.batched.draw(24, 12))
    stages.batched.apply(x, draws)
    assert torch.equal(x, before)


def test_steps_that_cannot_be_batched_are_named() -> None:
    with pytest.raises(ValueError, match="cannot batch RandomRotation"):
        BatchAugment([v2.RandomHorizontalFlip(), v2.RandomRotation(10)])
    transform = build_train_transform(24, 12)
    transform.transforms.insert(3, v2.RandomRotation(10))
    stages = split_stages(transform)
    assert stages.per_sample is not None and stages.batched is None  # the loader runs it image by image
