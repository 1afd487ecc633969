"""ViT backbones: weights from DINO / TransReID-SSL / PASS / timm files (the position embedding resized as the
reference resizes it), the IBN convolution stem, the config, BatchNorm groups, bf16 and the start-up check."""

from __future__ import annotations

import argparse
import copy
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from mqreid.models.ghost_bn import GhostBatchNorm, convert_ghost_bn
from mqreid.models.precision import autocast

pytest.importorskip("timm")
from mqreid.models.vit import ConvStemEmbed, ViTEmbeddingNet, build_vit, load_vit_weights  # noqa: E402

from conftest import compose_config  # noqa: E402

DEPTH = 2  # blocks: the layout of ViT-S, milliseconds per image


def source_trunk(arch="vit_small", size=(256, 128), seed=0):
    """A 'pretrained' trunk with random (seeded) weights at the reference's training size."""
    torch.manual_seed(seed)
    trunk = build_vit(arch, img_size=size, depth=DEPTH).trunk
    with torch.no_grad():
        for p in trunk.parameters():
            p.normal_()
    return trunk.state_dict()


def reference_resize(posemb, height, width, hw_ratio):
    """TransReID-SSL's resize_pos_embed, restated: the old grid from hw_ratio, bilinear (align_corners=False)."""
    token, grid = posemb[:, :1], posemb[0, 1:]
    old_h = int(math.sqrt(len(grid) * hw_ratio))
    old_w = old_h // hw_ratio
    grid = grid.reshape(1, old_h, old_w, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bilinear")
    return torch.cat([token, grid.permute(0, 2, 3, 1).reshape(1, height * width, -1)], dim=1)


def test_a_dino_checkpoint_loads_with_the_reference_resize(tmp_path):
    """LUPerson layout: {"teacher": {"backbone.<key>"}} (+ DINO's head, the student and its arguments) at
    256x128 (16x8 patches), loaded into a 128x64 model (8x4 patches) with hw_ratio 2."""
    source = source_trunk()
    teacher = {f"backbone.{k}": v for k, v in source.items()}
    teacher["head.mlp.0.weight"] = torch.randn(8, 384)  # DINO's projection head: ignored
    path = tmp_path / "dino.pth"
    torch.save({"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=16)}, path)

    model = build_vit("vit_small", img_size=(128, 64), depth=DEPTH)
    neck = copy.deepcopy(model.neck.state_dict())
    report = load_vit_weights(model.trunk, path, hw_ratio=2)
    assert report["loaded"] == report["total"] == len(source) and report["unloaded"] == []
    assert report["ignored"] == [] and report["resized"] == (129, 33)  # DINO's head lies outside "backbone."
    loaded = model.trunk.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if k != "pos_embed")
    expected = reference_resize(source["pos_embed"], 8, 4, hw_ratio=2)
    assert loaded["pos_embed"].shape == (1, 33, 384)
    assert (loaded["pos_embed"] - expected).abs().max().item() == 0.0  # the reference's numbers exactly
    assert all(torch.equal(neck[k], v) for k, v in model.neck.state_dict().items())  # the neck starts fresh
    # the same through the builder (pretrained=PATH), as the config does it
    built = build_vit("vit_small", img_size=(128, 64), depth=DEPTH, pretrained=str(path), hw_ratio=2)
    assert all(torch.equal(built.trunk.state_dict()[k], v) for k, v in loaded.items())


def test_transreid_pass_and_timm_layouts_load(tmp_path):
    source = source_trunk()
    # TransReID-SSL's fine-tuned checkpoints: DataParallel's "module." and its bottleneck (ignored)
    transreid = {"state_dict": {**{f"module.{k}": v for k, v in source.items()},
                                "module.bottleneck.weight": torch.ones(384), "module.fc.weight": torch.ones(2, 384)},
                 "epoch": 50, "best_mAP": 0.9}
    # PASS / TransReID supervised: a "model" wrapper and "base." keys, a classifier (ignored)
    passed = {"model": {**{f"base.{k}": v for k, v in source.items()}, "classifier.weight": torch.ones(5, 384)}}
    # an mqreid checkpoint of a ViT run: "trunk." keys and the BN neck (ignored)
    ours = {"model": {**{f"trunk.{k}": v for k, v in source.items()}, "neck.weight": torch.ones(384)}, "epoch": 1}
    for name, state in (("transreid", transreid), ("pass", passed), ("plain", dict(source)), ("mqreid", ours)):
        torch.save(state, tmp_path / f"{name}.pth")
        model = build_vit("vit_small", img_size=(256, 128), depth=DEPTH, pretrained=str(tmp_path / f"{name}.pth"))
        assert all(torch.equal(model.trunk.state_dict()[k], v) for k, v in source.items()), name
    # timm's ImageNet layout: square 224 grid (14x14), its head, and an early linear patch projection
    timm_state = source_trunk(size=(224, 224))
    timm_state["patch_embed.proj.weight"] = timm_state["patch_embed.proj.weight"].flatten(1)
    timm_state.update({"head.weight": torch.ones(1000, 384), "head.bias": torch.ones(1000)})
    torch.save(timm_state, tmp_path / "timm.pth")
    model = build_vit("vit_small", img_size=(64, 32), depth=DEPTH, pretrained=str(tmp_path / "timm.pth"))
    pos = model.trunk.state_dict()["pos_embed"]
    assert torch.equal(pos, reference_resize(timm_state["pos_embed"], 4, 2, hw_ratio=1))
    assert torch.equal(model.trunk.patch_embed.proj.weight.flatten(1), timm_state["patch_embed.proj.weight"])


def test_keys_that_do_not_load_are_listed_and_strict_false_loads_the_rest(tmp_path, caplog):
    source = source_trunk()
    state = {**source, "blocks.0.attn.extra": torch.ones(3)}
    del state["norm.weight"]
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(RuntimeError) as err:
        build_vit("vit_small", img_size=(256, 128), depth=DEPTH, pretrained=str(tmp_path / "odd.pth"))
    message = str(err.value)
    assert "not in the model: blocks.0.attn.extra" in message and "missing from the file: norm.weight" in message
    assert "backbone.strict=false" in message
    model = build_vit("vit_small", img_size=(256, 128), depth=DEPTH, pretrained=str(tmp_path / "odd.pth"),
                      strict=False)
    assert torch.equal(model.trunk.state_dict()["blocks.1.mlp.fc2.weight"], source["blocks.1.mlp.fc2.weight"])
    assert "blocks.0.attn.extra" in caplog.text
    # plain ViT-S weights into the ICS model: the stem is missing and the projection has another shape
    torch.save(source, tmp_path / "plain.pth")
    with pytest.raises(RuntimeError, match=r"patch_embed.proj.weight \[384, 3, 16, 16\] in the file, "
                                           r"\[384, 64, 8, 8\] in the model.*patch_embed.conv.0.weight"):
        build_vit("vit_small_ics", img_size=(256, 128), depth=DEPTH, pretrained=str(tmp_path / "plain.pth"))


def test_loading_errors_name_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained: weight file .*none.pth does not exist"):
        build_vit("vit_small", img_size=(256, 128), depth=1, pretrained=str(tmp_path / "none.pth"))
    torch.save(source_trunk(), tmp_path / "lup.pth")  # 16x8 = 128 patch tokens: not a square grid
    with pytest.raises(ValueError, match="backbone.hw_ratio=1: the weights' position embedding has 128 patch tokens"):
        build_vit("vit_small", img_size=(128, 64), depth=DEPTH, pretrained=str(tmp_path / "lup.pth"))
    torch.save({"model": {"x": pathlib.PurePosixPath("x")}}, tmp_path / "pickled.pth")  # other objects: not read
    with pytest.raises(ValueError, match="cannot be read safely"):
        build_vit("vit_small", img_size=(256, 128), depth=1, pretrained=str(tmp_path / "pickled.pth"))
    with pytest.raises(ValueError, match="input.height=250: expected a multiple of the ViT patch size 16"):
        build_vit("vit_small", img_size=(250, 128), depth=1)


def test_the_ics_stem_shapes():
    stem = ConvStemEmbed(img_size=(256, 128), embed_dim=384)
    x = torch.randn(2, 3, 256, 128)
    hidden = stem.conv(x)
    assert hidden.shape == (2, 64, 128, 64)  # the 7x7 convolution of stride 2, then two 3x3 of stride 1
    assert stem(x).shape == (2, 128, 384) and stem.grid_size == (16, 8) and stem.num_patches == 128
    assert stem.proj.kernel_size == (8, 8) and stem.proj.stride == (8, 8)  # one token per 16x16 input pixels
    ibn = stem.conv[1]
    assert (ibn.IN.num_features, ibn.BN.num_features) == (32, 32)
    names = {k for k in stem.state_dict()}  # the reference's names, so its weight files load as they are
    assert {"conv.0.weight", "conv.1.IN.weight", "conv.1.BN.running_mean", "conv.4.BN.weight", "conv.6.weight",
            "conv.7.running_var", "proj.weight", "proj.bias"} <= names
    with pytest.raises(ValueError, match="built for 256x128"):
        stem(torch.randn(1, 3, 128, 64))
    model = build_vit("vit_small_ics", img_size=(64, 32), depth=1).eval()
    out = model(torch.randn(3, 3, 64, 32))
    assert out.shape == (3, 384) and torch.allclose(out.norm(dim=1), torch.ones(3))
    assert model.trunk.pos_embed.shape == (1, 1 + 8, 384)


def test_the_composed_config_alone_builds_the_model():
    cfg = compose_config(["backbone=vit_small_ics", "input.height=64", "input.width=32", "backbone.depth=1",
                          "backbone.pretrained=false"])
    model = instantiate(cfg.backbone)
    assert isinstance(model, ViTEmbeddingNet) and isinstance(model.trunk.patch_embed, ConvStemEmbed)
    assert model.trunk.patch_embed.img_size == (64, 32) and model.embedding_dim == 384
    base = instantiate(compose_config(["backbone=vit_base", "backbone.depth=2", "backbone.drop_path=0.2",
                                           "backbone.pretrained=false"]).backbone)
    assert base.embedding_dim == 768 and base.trunk.pos_embed.shape == (1, 1 + 4 * 2, 768)  # the 64x32 recipe
    assert isinstance(base.trunk.blocks[0].drop_path1, torch.nn.Identity)  # linear from 0 to drop_path
    assert base.trunk.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    assert base.trunk.blocks[0].attn.qkv.bias is not None and base.trunk.norm.eps == 1e-6
    small = instantiate(compose_config(["backbone=vit_small", "backbone.depth=1",
                                        "backbone.pretrained=false"]).backbone)
    assert sum(p.numel() for p in small.trunk.blocks[0].parameters()) == 1_774_464  # ViT-S's block


def test_batchnorm_groups_apply_where_batchnorm_remains():
    """The ICS stem's BatchNorm halves and the neck become BatchNorm groups; the LayerNorms stay; a batch of
    two groups gives what two processes holding one group each give."""
    torch.manual_seed(0)
    model = convert_ghost_bn(build_vit("vit_small_ics", img_size=(32, 16), depth=1, drop_path=0.0), 4)
    ghosts = [n for n, m in model.named_modules() if isinstance(m, GhostBatchNorm)]
    assert ghosts == ["trunk.patch_embed.conv.1.BN", "trunk.patch_embed.conv.4.BN", "trunk.patch_embed.conv.7",
                      "neck"]
    plain = convert_ghost_bn(build_vit("vit_small", img_size=(32, 16), depth=1), 4)
    assert [n for n, m in plain.named_modules() if isinstance(m, GhostBatchNorm)] == ["neck"]
    x = torch.randn(8, 3, 32, 16)
    halves = [copy.deepcopy(model).train()(part) for part in x.split(4)]
    assert torch.allclose(model.train()(x), torch.cat(halves), atol=1e-5)


def test_bf16_autocast_runs_the_vit():
    torch.manual_seed(0)
    model = build_vit("vit_small_ics", img_size=(32, 16), depth=1).eval()
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        ref = model(x)
        with autocast("cpu", "bf16"):
            low = model(x)
    assert low.dtype == torch.float32 or low.dtype == torch.bfloat16
    assert torch.isfinite(low.float()).all() and (low.float() - ref).abs().max() < 0.05
    model.train()  # a training step's backward under autocast reaches every parameter, the stem's included
    with autocast("cpu", "bf16"):
        loss = model(torch.randn(4, 3, 32, 16)).float().sum()
    loss.backward()
    assert model.trunk.patch_embed.conv[0].weight.grad is not None
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_startup_check_refuses_sizes_off_the_patch_grid_naming_the_key():
    from mqreid.engine.validate import config_problems

    problems = config_problems(compose_config(["backbone=vit_small", "input.height=250"]))
    assert problems == ["input.height=250: expected a multiple of the ViT patch size 16 (backbone=vit_small covers "
                        "the input with 16x16 patches), e.g. input.height=256"]
    problems = config_problems(compose_config(["backbone=vit_small_ics", "backbone.hw_ratio=0",
                                               "backbone.pretrained=/nowhere/w.pth", "+backbone.bogus=1"]))
    assert problems == ["backbone.bogus is not a setting of mqreid.models.build_vit (valid: arch, img_size, "
                        "pretrained, strict, hw_ratio, drop_path, depth, neck)"]
    problems = config_problems(compose_config(["backbone=vit_small_ics", "backbone.hw_ratio=0",
                                               "backbone.pretrained=/nowhere/w.pth"]))
    assert problems[0].startswith("backbone.hw_ratio=0: expected an integer >= 1")
    assert problems[1] == "backbone.pretrained: weight file /nowhere/w.pth does not exist"
    assert config_problems(compose_config(["backbone=vit_small", "debug=fast"])) == []


def test_the_synthetic_warm_start_of_a_vit_loads_as_its_trunk(tmp_path):
    """backbone.pretrained=synthetic stores the trunk's weights in float16 under timm's names."""
    from mqreid.engine import warm_start

    torch.manual_seed(0)
    model = build_vit("vit_small_ics", img_size=(32, 16), depth=1)
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in warm_start._trunk_state(model, "vit_small_ics").items()}
    torch.save(state, tmp_path / "warm.pth")
    loaded = build_vit("vit_small_ics", img_size=(32, 16), depth=1, pretrained=str(tmp_path / "warm.pth"))
    assert all(torch.equal(loaded.trunk.state_dict()[k], v.to(loaded.trunk.state_dict()[k].dtype))
               for k, v in state.items())
