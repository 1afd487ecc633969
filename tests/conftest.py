"""Shared fixtures: composed configs, a tiny synthetic dataset, and no network for wandb."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"
REPO = CONF.parent


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_config(overrides=(), name="config"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


TINY = [
    "dataset.num_train_ids=8", "dataset.num_test_ids=6", "dataset.num_cameras=3",
    "dataset.camera_shift=0.3", "dataset.noise=0.3", "dataset.occlusion=0.1",
    "train.epochs=2", "train.iters=2", "train.batch_size=16", "train.num_instances=4", "train.bn_group=8",
    "train.test_batch_size=128", "train.num_workers=0", "eval.every=1", "progress=false", "device=cpu",
    "backbone.pretrained=false",
]


# DBSCAN radius at which the tiny set forms several clusters from random init (4 at eps 0.4)
TINY_EPS = "clusterer.eps=0.4"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One generated tiny synthetic set shared by the session's end-to-end tests."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_cfg(data_root, tmp_path):
    def make(*overrides):
        cfg = compose_config([*TINY, f"data_root={data_root}", *overrides])
        with open_dict(cfg):
            cfg.run_dir = str(tmp_path / "run")
        return cfg

    return make
