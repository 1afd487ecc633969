"""A tiny trained-looking checkpoint (small CNN, 16-d embeddings) in the format train.py writes as best.pt."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from mqreid.models import build_model

from conftest import TINY, compose_config

WIDTHS = [8, 16]  # two stages: a 16-d embedding, milliseconds per batch


def write_tiny_checkpoint(path: Path, data_root: Path | str, *overrides: str, seed: int = 0) -> Path:
    """Save {"model", "epoch", "metrics", "config"} to ``path``; the config is the tiny synthetic one.

    The BatchNorm running statistics are moved off their initial values by a few forward passes in training
    mode, so eval mode differs from an identity normalisation.
    """
    cfg = compose_config([*TINY, f"data_root={data_root}", f"+backbone.widths=[{','.join(map(str, WIDTHS))}]",
                          *overrides])
    torch.manual_seed(seed)
    net = build_model("small_cnn", pretrained=False, pooling="gem", neck=True, widths=WIDTHS)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, cfg.input.height, cfg.input.width) * 0.7 + 0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "epoch": 1, "metrics": {"mAP": 1.0},
                "config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path
