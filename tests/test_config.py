"""Every YAML file of every group composes, and every _target_ accepts the arguments it is given."""

from __future__ import annotations

import importlib
import inspect

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import CONF, compose_config

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
CHOICES = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def _targets(node, path="cfg"):
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for k in node:
            yield from _targets(node._get_node(k), f"{path}.{k}")
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def _check_targets(cfg):
    checked = 0
    for path, node in _targets(cfg):
        module, _, name = node._target_.rpartition(".")
        fn = getattr(importlib.import_module(module), name)
        kwargs = {k: v for k, v in node.items() if not str(k).startswith("_")}
        sig = inspect.signature(fn)
        if node.get("_partial_", False):
            sig.bind_partial(**kwargs)
        else:
            sig.bind(**kwargs)
        checked += 1
    return checked


@pytest.mark.parametrize("group,choice", CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_group_option_composes(group, choice):
    overrides = [f"{group}={choice}"]
    if group == "dataset" and choice == "custom":
        overrides.append("dataset.root=/somewhere")
    cfg = compose_config(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert _check_targets(cfg) >= 6


def test_eval_config_requires_checkpoint():
    cfg = compose_config(["checkpoint=x.pt"], name="eval")
    assert cfg.checkpoint == "x.pt" and cfg.get("dataset") is None  # the checkpoint's own dataset
    assert compose_config(["checkpoint=x.pt", "dataset=market1501"], name="eval").dataset.name == "market1501"
    with pytest.raises(Exception, match="checkpoint"):
        OmegaConf.to_container(compose_config([], name="eval"), throw_on_missing=True)


def test_presets_map_the_original_flags():
    cfg = compose_config(["experiment=market1501_infomap"])
    # --k1 15 counts the point itself: 14 neighbours; --k2 4: clusters of <= 4 images are outliers
    assert cfg.clusterer.min_sim == 0.5 and cfg.clusterer.k == 14 and cfg.clusterer.min_cluster_size == 5
    assert cfg.backbone.arch == "resnet50" and cfg.train.batch_size == 256 and cfg.train.num_instances == 16
    # the original's sampler, BatchNorm over 64 images (4 GPUs at 256), fp32, unnormalised queue init,
    # and the learned raw temperature at lr x tlr with the optimiser's weight decay
    assert cfg.train.sampler == "random_multiple_gallery" and cfg.train.bn_group == 64 and cfg.train.precision == "fp32"
    assert cfg.memory.init == "centroid" and cfg.memory.queue_size == 16
    assert cfg.temp.tlr == 0.01 and cfg.temp.weight_decay is None and cfg.optim.optimizer.weight_decay == 5e-4
    cfg = compose_config(["experiment=msmt17_dbscan"])
    assert cfg.clusterer.eps == 0.6 and cfg.clusterer.k1 == 30 and cfg.train.iters == 400
    cfg = compose_config(["experiment=veri_dbscan"])
    assert (cfg.input.height, cfg.input.width) == (224, 224)


def test_the_synthetic_default_uses_the_warm_start_and_the_papers_clusterer_settings():
    cfg = compose_config([])
    assert cfg.backbone.pretrained == "synthetic" and cfg.clusterer.eps == 0.6
    assert compose_config(["clusterer=infomap"]).clusterer.min_sim == 0.5
    assert compose_config(["debug=fast"]).backbone.pretrained is False  # seconds, no warm start to train
    assert compose_config(["experiment=market1501_dbscan"]).backbone.pretrained is True  # ImageNet


@pytest.mark.parametrize("launcher", ["slurm", "slurm_local"])
def test_slurm_launcher_configs_compose(launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    assert "submitit" in launcher_cfg._target_.lower()
    if launcher == "slurm":
        assert launcher_cfg.tasks_per_node == launcher_cfg.gpus_per_node == 4


def test_sweep_configs_define_the_ablations():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["sweep=queue_size"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["memory.queue_size"] == "2,4,8,16,32"


def test_vit_presets_map_the_published_commands():
    """TransReID-SSL's market_usl.sh / msmt_usl.sh (ViT-S+ICS) and its script's defaults."""
    for preset, eps, bn_group, every in (("market1501_vit_small_ics", 0.6, 64, 10),
                                         ("msmt17_vit_small_ics", 0.7, 128, 50)):
        cfg = compose_config([f"experiment={preset}"])
        backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
        assert backbone["arch"] == "vit_small_ics" and backbone["img_size"] == [256, 128]  # -a vit_small --conv-stem
        assert backbone["pretrained"].endswith("pretrained/vit_small_ics_cfs_lup.pth")            # -pp
        assert (backbone["hw_ratio"], backbone["drop_path"]) == (2, 0.3)                          # --hw-ratio 2
        assert list(cfg.input.mean) == list(cfg.input.std) == [0.5, 0.5, 0.5]                      # --self-norm
        assert (cfg.train.batch_size, cfg.train.num_instances, cfg.train.iters) == (256, 8, 200)  # -b 256 ...
        assert (cfg.train.epochs, cfg.train.bn_group, cfg.eval.every) == (50, bn_group, every)
        assert cfg.train.sampler == "random_multiple_gallery"
        assert cfg.clusterer._target_.endswith("DBSCANClusterer") and (cfg.clusterer.eps, cfg.clusterer.k1,
                                                                       cfg.clusterer.k2) == (eps, 30, 6)
        assert cfg.memory._target_.endswith("CentroidMemory") and cfg.memory.hard is True        # --use-hard
        assert cfg.memory.momentum == 0.2 and cfg.temp.value == 0.05
        opt = cfg.optim.optimizer
        assert opt._target_ == "torch.optim.SGD" and (opt.lr, opt.momentum, opt.weight_decay) == (3.5e-4, 0.9, 5e-4)
        assert (cfg.optim.scheduler.step_size, cfg.optim.scheduler.gamma) == (20, 0.1)
    assert compose_config(["experiment=market1501_dbscan"]).optim.optimizer._target_ == "torch.optim.Adam"
    multi = compose_config(["experiment=msmt17_vit_small_ics", "memory=multi_queue"])  # one override
    assert multi.memory._target_.endswith("MultiQueueMemory") and multi.clusterer.eps == 0.7
