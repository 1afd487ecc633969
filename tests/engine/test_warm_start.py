"""The synthetic warm start: cached per backbone/input/source, loadable as a trunk, and used by the trainer."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mqreid.engine import warm_start
from mqreid.engine.trainer import Trainer
from mqreid.models import build_model, build_trunk
from mqreid.models.embedding import EmbeddingNet

TINY_SOURCE = warm_start.SourceDomain(num_ids=4, num_cameras=2, steps=3, extra={"images_per_id": (4, 5)})
SMALL = OmegaConf.create({"_target_": "mqreid.models.build_model", "arch": "small_cnn", "pretrained": False,
                          "pooling": "gem", "neck": True, "widths": [4, 8]})


def test_cache_path_names_everything_that_shapes_the_weights(tmp_path):
    base = warm_start.cache_path(SMALL, 64, 32, tmp_path, TINY_SOURCE)
    assert base.parent == tmp_path / "pretrained" and base.name.startswith("synthetic_small_cnn_64x32_")
    assert warm_start.cache_path(OmegaConf.merge(SMALL, {"pretrained": "synthetic"}), 64, 32, tmp_path,
                                 TINY_SOURCE) == base  # the pretrained flag itself is not part of the key
    others = {warm_start.cache_path(OmegaConf.merge(SMALL, {"widths": [4, 16]}), 64, 32, tmp_path, TINY_SOURCE),
              warm_start.cache_path(SMALL, 32, 16, tmp_path, TINY_SOURCE),
              warm_start.cache_path(SMALL, 64, 32, tmp_path, warm_start.SourceDomain(num_ids=5, num_cameras=2)),
              warm_start.cache_path(SMALL, 64, 32, tmp_path)}
    assert base not in others and len(others) == 4


def test_pretraining_learns_keeps_the_global_rng_and_loads_as_a_trunk(tmp_path):
    fresh = build_model("small_cnn", widths=[4, 8]).trunk.state_dict()
    rng = torch.random.get_rng_state()
    state = warm_start.pretrain(SMALL, 32, 16, tmp_path, source=TINY_SOURCE, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert state.keys() == fresh.keys()
    assert any(not torch.equal(state[k], fresh[k]) for k in state if k.endswith("weight"))  # it trained
    again = warm_start.pretrain(SMALL, 32, 16, tmp_path, source=TINY_SOURCE, progress=False)
    assert all(torch.equal(state[k], again[k]) for k in state)  # deterministic
    torch.save(state, tmp_path / "w.pth")
    model = build_model("small_cnn", widths=[4, 8], pretrained=str(tmp_path / "w.pth"))
    assert all(torch.equal(model.trunk.state_dict()[k], state[k]) for k in state)
    with pytest.raises(RuntimeError, match="not small_cnn weights of widths"):
        build_model("small_cnn", widths=[4, 16], pretrained=str(tmp_path / "w.pth"))
    with pytest.raises(ValueError, match="resolved to a weight file by the trainer"):
        build_model("small_cnn", pretrained="synthetic")


def test_pretraining_never_calls_nll_loss(tmp_path, monkeypatch):
    """train.deterministic=true on CUDA refuses nll_loss (F.cross_entropy's kernel), and the trainer turns that
    mode on before it trains a missing warm start: the pretraining uses the memory's deterministic loss."""
    import torch.nn.functional as F

    def refused(*args, **kwargs):
        raise RuntimeError("nll_loss does not have a deterministic implementation on CUDA")

    monkeypatch.setattr(F, "nll_loss", refused)
    monkeypatch.setattr(F, "cross_entropy", refused)
    state = warm_start.pretrain(SMALL, 32, 16, tmp_path, source=TINY_SOURCE, progress=False)
    assert state and all(torch.isfinite(v.float()).all() for v in state.values() if v.is_floating_point())


def test_the_instance_norm_small_cnn_has_its_own_warm_start_that_loads_as_its_trunk(tmp_path):
    ibn = OmegaConf.merge(SMALL, {"arch": "small_cnn_ibn"})
    path = warm_start.cache_path(ibn, 32, 16, tmp_path, TINY_SOURCE)
    assert path.name.startswith("synthetic_small_cnn_ibn_32x16_")
    assert path != warm_start.cache_path(SMALL, 32, 16, tmp_path, TINY_SOURCE)
    state = warm_start.pretrain(ibn, 32, 16, tmp_path, source=TINY_SOURCE, progress=False)
    assert any(".IN." in k for k in state)
    torch.save(state, tmp_path / "ibn.pth")
    model = build_model("small_cnn_ibn", widths=[4, 8], pretrained=str(tmp_path / "ibn.pth"))
    assert all(torch.equal(model.trunk.state_dict()[k], state[k]) for k in state)


def test_resnet_trunks_are_saved_under_torchvision_names(tmp_path):
    trunk, channels = build_trunk("resnet18")
    state = warm_start._trunk_state(EmbeddingNet(trunk, channels), "resnet18")
    assert "layer4.1.bn2.running_var" in state and "conv1.weight" in state
    torch.save(state, tmp_path / "r.pth")
    loaded, _ = build_trunk("resnet18", pretrained=str(tmp_path / "r.pth"))  # no missing tensors
    assert torch.equal(loaded[0].weight, trunk[0].weight)


def test_the_trainer_trains_the_warm_start_once_and_reuses_it(tiny_cfg, data_root, monkeypatch):
    monkeypatch.setattr(warm_start, "SOURCE", TINY_SOURCE)
    calls = []
    real = warm_start.pretrain
    monkeypatch.setattr(warm_start, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = tiny_cfg("backbone.pretrained=synthetic", "+backbone.widths=[4,8]", "input.height=32", "input.width=16")
    first = Trainer(cfg, cfg.run_dir)
    path = warm_start.cache_path(cfg.backbone, 32, 16, data_root)
    assert path.is_file() and len(calls) == 1
    stored = torch.load(path, weights_only=True)
    assert all(torch.equal(first.model.trunk.state_dict()[k], v) for k, v in stored.items())
    second = Trainer(cfg, cfg.run_dir)
    assert len(calls) == 1  # reused from the cache
    # the same run either way: every weight (the pooling and neck start fresh) and the random state match
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                  second.model.state_dict().values()))


def _default_cfg(data_root, *overrides):
    from conftest import compose_config

    return compose_config([f"data_root={data_root}", "progress=false", "device=cpu", "train.num_workers=0",
                           *overrides])


def test_the_default_recipe_has_its_warm_start_in_the_package(tmp_path):
    """The shipped file is the one the default recipe asks for: a change to the source domain, the training
    or the small CNN changes the cache name and fails here until ``bench/warm_start.py --retrain --package``
    has shipped the new weights."""
    cfg = _default_cfg(tmp_path)
    shipped = warm_start.packaged_path(warm_start.cache_path(cfg.backbone, cfg.input.height, cfg.input.width,
                                                             tmp_path))
    assert shipped.is_file(), f"{shipped} is missing: python bench/warm_start.py --retrain --package"
    assert shipped.stat().st_size < 4 << 20
    state = torch.load(shipped, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = build_model("small_cnn", pretrained=str(shipped))  # loads as the trunk, nothing missing
    assert all(torch.equal(model.trunk.state_dict()[k], v.float()) for k, v in state.items()
               if v.is_floating_point())


@pytest.mark.slow
def test_the_packaging_command_reproduces_the_shipped_warm_start(tmp_path):
    """What ``bench/warm_start.py --retrain --package`` trains (the same pretraining, from a fresh data root)
    matches the shipped weights in quality: its mAP on the default set's query/gallery and its first
    clustering. Bit equality is not asked for: the float32 sums of another CPU or library build differ."""
    cfg = _default_cfg(tmp_path)
    cache = warm_start.cache_path(cfg.backbone, cfg.input.height, cfg.input.width, tmp_path)
    shipped = warm_start.packaged_path(cache)
    figures = {}
    for name, weights in (("shipped", shipped), ("retrained", None)):
        cache.unlink(missing_ok=True)
        if weights is None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(warm_start.pretrain(cfg.backbone, cfg.input.height, cfg.input.width, tmp_path,
                                           progress=False), cache)
        trainer = Trainer(cfg, tmp_path / name)  # copies the shipped file into the empty cache
        stats = trainer.describe_clusters(trainer.cluster(trainer.extract(trainer.dataset.train)))
        figures[name] = {**trainer.evaluate(), "ari": stats["ari"]}
    shipped_, retrained = figures["shipped"], figures["retrained"]
    assert shipped_["mAP"] > 25  # a warm start at all (bench/warm_start.py: random init 2.8, warm start 32.9)
    assert retrained["mAP"] == pytest.approx(shipped_["mAP"], abs=3.0)
    assert retrained["ari"] == pytest.approx(shipped_["ari"], abs=0.1)
