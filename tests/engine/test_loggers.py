"""The wandb logger works offline and never needs the network."""

from __future__ import annotations

import pytest

from mqreid.engine.trainer import Trainer

from conftest import TINY_EPS


def test_wandb_offline_run_is_written(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny_cfg("logger=wandb", "train.epochs=1", TINY_EPS)
    Trainer(cfg, cfg.run_dir).fit()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
