"""Hand-crafted baselines on the synthetic benchmark: how far raw pixels and colour histograms get.

    python bench/synthetic_baselines.py                              # the default run's settings
    python bench/synthetic_baselines.py --camera-shift 1 --noise 1 --occlusion 0.2   # the hardest

Features are L2-normalised after removing their mean; the ranking uses mqreid's evaluate_features (Market
protocol). With --camera-centering the per-camera mean feature is removed first, as the trainer does.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from mqreid.data import build_dataset
from mqreid.evaluation import evaluate_features


def load(items, size=(32, 64)) -> np.ndarray:
    return np.stack([np.asarray(Image.open(it.path).convert("RGB").resize(size, Image.BILINEAR), np.float32) / 255
                     for it in items])


def pixels(x: np.ndarray) -> np.ndarray:
    return x[:, ::4, ::4].reshape(len(x), -1)


def rgb_histogram(x: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel histograms, square-rooted (Hellinger)."""
    h = [np.stack([np.histogram(im[..., c], bins=bins, range=(0, 1))[0] for im in x]) for c in range(3)]
    return np.sqrt(np.concatenate(h, 1).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="data")
    ap.add_argument("--camera-shift", type=float, default=0.3)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--occlusion", type=float, default=0.1)
    args = ap.parse_args()
    ds = build_dataset("synthetic", args.root, verbose=False, camera_shift=args.camera_shift, noise=args.noise,
                       occlusion=args.occlusion)
    q, g = load(ds.query), load(ds.gallery)
    ids = [np.array([it[k] for it in items]) for items in (ds.query, ds.gallery) for k in (1, 2)]
    cams = np.concatenate([ids[1], ids[3]])
    print(f"camera_shift {args.camera_shift} noise {args.noise} occlusion {args.occlusion}")
    print("| features | mAP | Rank-1 | mAP, camera-centred | Rank-1, camera-centred |\n|---|---|---|---|---|")
    for name, fn in (("raw pixels 16x8", pixels), ("RGB histograms 3x16", rgb_histogram)):
        feats = np.concatenate([fn(q), fn(g)])
        row = []
        for centre in (False, True):
            f = feats - feats.mean(0)
            if centre:
                for c in np.unique(cams):
                    f[cams == c] -= f[cams == c].mean(0)
            f = torch.nn.functional.normalize(torch.from_numpy(f), dim=1)
            m = evaluate_features(f[: len(q)], f[len(q):], ids[0], ids[2], ids[1], ids[3])
            row += [f"{100 * m['mAP']:.1f}", f"{100 * m['cmc'][0]:.1f}"]
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
