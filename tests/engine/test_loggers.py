"""The wandb logger works offline and never needs the network; the TensorBoard logger's event files read
back with the scalars and pictures it was given."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mqreid.engine.loggers import TensorBoardLogger
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


def test_tensorboard_event_files_hold_the_scalars_images_and_config(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    picture = tmp_path / "clusters.png"
    Image.fromarray(np.full((12, 20, 4), 200, dtype=np.uint8)).save(picture)  # RGBA, as matplotlib saves
    logger = TensorBoardLogger()
    logger.start({"seed": 0, "train": {"epochs": 2, "lr": 3.5e-4}}, str(tmp_path / "run"))
    for step, loss in [(1, 2.5), (2, 2.25), (3, 2.0)]:
        logger.log({"step/loss": loss, "step/temperature": 0.05, "global_step": step}, step)
    logger.log({"epoch/mAP": 41.5, "epoch/rank1": np.float32(60.0), "epoch/clusters": 7, "epoch/note": "x",
                "epoch/sizes": [1, 2], "epoch": 1}, 3)
    logger.log({"epoch/mAP": 43.0, "epoch": 2}, 3)  # an epoch that trained no step: its own point all the same
    logger.log({"misc/value": 1.5}, 3)  # no axis key in the call: the given step
    logger.log_image("clusters", picture, 3)
    logger.finish()

    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()
    # no strings or lists, and the axis keys global_step and epoch are steps, not scalars
    assert set(tags["scalars"]) == {"step/loss", "step/temperature", "epoch/mAP", "epoch/rank1", "epoch/clusters",
                                    "misc/value"}
    loss = acc.Scalars("step/loss")
    assert [e.step for e in loss] == [1, 2, 3] and [e.value for e in loss] == [2.5, 2.25, 2.0]
    # per-epoch values are plotted against the epoch, as on the wandb dashboard
    assert [(e.step, e.value) for e in acc.Scalars("epoch/mAP")] == [(1, 41.5), (2, 43.0)]
    assert [(e.step, e.value) for e in acc.Scalars("epoch/rank1")] == [(1, 60.0)]
    assert [(e.step, e.value) for e in acc.Scalars("misc/value")] == [(3, 1.5)]
    assert tags["images"] == ["images/clusters"]
    (image,) = acc.Images("images/clusters")
    assert (image.step, image.width, image.height) == (3, 20, 12) and image.encoded_image_string[:4] == b"\x89PNG"
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "epochs: 2" in config and "lr: 0.00035" in config


def test_tensorboard_logger_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails as if not installed
    with pytest.raises(ImportError, match=r"logger=tensorboard.*pip install tensorboard.*mqreid\[tensorboard\]"):
        TensorBoardLogger()
