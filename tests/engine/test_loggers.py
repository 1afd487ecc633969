"""The wandb logger works offline and never needs the network."""

from __future__ import annotations

import pytest

from mqreid.engine.trainer import Trainer

from conftest import TINY_EPS


@pytest.mark.slow
def test_wandb_offline_run_is_written(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = tiny_cfg("logger=wandb", "train.epochs=1", TINY_EPS, "eval.visualize=2")
    Trainer(cfg, cfg.run_dir).fit()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    # the cluster gallery and the ranked lists went to wandb as images as well as into the run directory
    media = [p.name for p in runs[0].rglob("*.png")]
    assert any(name.startswith("images/clusters") or "clusters" in name for name in media), media
    assert any("ranked_lists" in name for name in media), media
    assert (tmp_path / "run" / "clusters" / "epoch001.png").is_file()
