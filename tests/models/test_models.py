import pytest
import torch

from mqreid.models import IBN, build_model


@pytest.mark.parametrize("arch,dim", [("small_cnn", 256), ("small_cnn_ibn", 256), ("resnet18", 512),
                                      ("resnet50_ibn", 2048)])
def test_embeddings_are_normalised_in_train_and_eval(arch, dim):
    torch.manual_seed(0)
    model = build_model(arch)
    x = torch.randn(2, 3, 64, 32)
    for mode in (True, False):
        model.train(mode)
        f = model(x)
        assert f.shape == (2, dim)
        assert torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-5)


def test_last_stride_one_doubles_the_final_map():
    x = torch.randn(1, 3, 128, 64)
    assert build_model("resnet18", last_stride=1).trunk(x).shape[-2:] == (8, 4)
    assert build_model("resnet18", last_stride=2).trunk(x).shape[-2:] == (4, 2)


def test_ibn_a_replaces_bn1_in_layers_1_to_3():
    trunk = build_model("resnet50_ibn").trunk
    layer1, layer4 = trunk[4], trunk[7]
    assert isinstance(layer1[0].bn1, IBN) and not isinstance(layer4[0].bn1, IBN)


def test_small_cnn_ibn_puts_ibn_in_the_first_norm_of_stages_1_to_3_and_loads_its_own_weights(tmp_path):
    from mqreid.models import SmallCNN

    trunk = build_model("small_cnn_ibn").trunk
    norms = [m for m in trunk.body if isinstance(m, (IBN, torch.nn.BatchNorm2d))]
    assert [type(m).__name__ for m in norms] == ["IBN", "BatchNorm2d"] * 3 + ["BatchNorm2d"] * 2
    assert [m.half for m in norms if isinstance(m, IBN)] == [16, 32, 64]  # half of 32, 64, 128 channels
    plain = sum(p.numel() for p in SmallCNN().parameters())
    assert sum(p.numel() for p in trunk.parameters()) == plain  # IN's affine pairs replace BN's one for one
    torch.save(trunk.state_dict(), tmp_path / "ibn.pth")
    again = build_model("small_cnn_ibn", pretrained=str(tmp_path / "ibn.pth")).trunk
    assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(), again.state_dict().values()))
    torch.save(SmallCNN().state_dict(), tmp_path / "plain.pth")  # the plain CNN's weights are refused by name
    with pytest.raises(RuntimeError, match="not small_cnn_ibn weights"):
        build_model("small_cnn_ibn", pretrained=str(tmp_path / "plain.pth"))


def test_pretrained_from_a_path_and_clear_errors(tmp_path, monkeypatch):
    ref = build_model("resnet18")
    trunk_state = {k.removeprefix("trunk."): v for k, v in ref.state_dict().items() if k.startswith("trunk.")}
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]  # torchvision naming
    state = {}
    for k, v in trunk_state.items():
        i, rest = k.split(".", 1)
        state[f"{names[int(i)]}.{rest}"] = v
    torch.save(state, tmp_path / "w.pth")
    model = build_model("resnet18", pretrained=str(tmp_path / "w.pth"))
    assert torch.equal(model.trunk[0].weight, ref.trunk[0].weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="small_cnn has no ImageNet"):
        build_model("small_cnn", pretrained=True)
    with pytest.raises(ValueError, match="expected one of"):
        build_model("vgg")


def test_offline_download_names_where_to_put_the_file(monkeypatch, tmp_path):
    from torchvision.models import resnet

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(resnet.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth"):
        build_model("resnet18", pretrained=True)


def test_precision_rule_reads_the_stored_config():
    from mqreid.models.precision import autocast, stored_precision

    assert stored_precision({"train": {"precision": "bf16"}}) == "bf16"
    assert stored_precision({"train": {"amp": True}}) == "fp16"  # checkpoints with the older flag
    assert stored_precision({"train": {"amp": False}}) == stored_precision({}) == "fp32"
    with pytest.raises(ValueError, match="train.precision=fp8: expected one of fp32, bf16, fp16"):
        stored_precision({"train": {"precision": "fp8"}})
    with autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_ibn_keeps_channels_last():
    from mqreid.models import IBN

    x = torch.randn(2, 8, 4, 3).contiguous(memory_format=torch.channels_last)
    out = IBN(8).train()(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, IBN(8).train()(x.contiguous()), atol=1e-6)
