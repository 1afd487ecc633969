"""How far torchvision's tensor colour-jitter kernels (what the training transform runs, on uint8 tensors)
are from its PIL kernels, on the default synthetic set's training images.

    python bench/jitter_kernels.py [--images 2000] [--strength 0.4]

Each image gets the same ColorJitter draws (the same seed) on both paths; the table gives the absolute
pixel difference in grey levels (0-255) over all pixels, per adjustment alone and for the whole jitter.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mqreid.data import build_dataset
from mqreid.data.loader import read_image


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--strength", type=float, default=0.4, help="input.color_jitter (default: the synthetic recipe's)")
    args = p.parse_args(argv)
    data = build_dataset("synthetic", os.environ.get("MQREID_DATA", "data"), verbose=False)
    resize = v2.Resize((64, 32), interpolation=v2.InterpolationMode.BICUBIC)
    pictures = [resize(read_image(item[0])) for item in data.train[:args.images]]
    c = args.strength
    jitters = {
        "brightness": v2.ColorJitter(brightness=c), "contrast": v2.ColorJitter(contrast=c),
        "saturation": v2.ColorJitter(saturation=c), "hue": v2.ColorJitter(hue=min(c / 4, 0.5)),
        "all four (the recipe)": v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 4, 0.5)),
    }
    print(f"{len(pictures)} images 64x32, strength {c}: |tensor kernel - PIL kernel| in grey levels")
    print("| adjustment | mean | 99th percentile | max | pixels differing |")
    print("|---|---|---|---|---|")
    for name, jitter in jitters.items():
        diffs = []
        for i, picture in enumerate(pictures):
            torch.manual_seed(i)
            a = F.pil_to_tensor(jitter(picture)).int()
            torch.manual_seed(i)
            b = jitter(F.pil_to_tensor(picture)).int()
            diffs.append((a - b).abs().flatten())
        d = torch.cat(diffs).numpy()
        print(f"| {name} | {d.mean():.2f} | {np.percentile(d, 99):.0f} | {d.max()} | {100 * (d > 0).mean():.1f} % |")


if __name__ == "__main__":
    main()
