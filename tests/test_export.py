"""ONNX export: mqreid-export gives a graph that matches PyTorch at any batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mqreid.tools.export import export_onnx, main
from mqreid.inference import ReIDModel

from tiny_checkpoint import write_tiny_checkpoint

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return write_tiny_checkpoint(root / "best.pt", root / "data")


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_matches_pytorch_at_batch_1_and_3(checkpoint, tmp_path, capsys, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    out = tmp_path / "sub" / "reid.onnx"
    assert main([str(checkpoint), "--onnx", str(out), "--opset", "18", "--exporter", exporter]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max abs difference to PyTorch on a random batch of 3:" in printed
    reported = float(printed.rsplit(":", 1)[1])
    assert 0 <= reported <= 1e-4
    assert [p.name for p in out.parent.iterdir()] == ["reid.onnx"]  # no temporary file left

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and inp.shape[1:] == [3, 64, 32] and not isinstance(inp.shape[0], int)
    assert outp.name == "features" and outp.shape[1] == 16
    model = ReIDModel.from_checkpoint(checkpoint, device="cpu")
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 32, generator=gen)
        onnx_out = session.run(["features"], {"images": x.numpy()})[0]
        assert onnx_out.shape == (batch, 16)
        assert np.abs(onnx_out - model.embed_normalized(x).numpy()).max() <= 1e-4


def test_export_errors(checkpoint, tmp_path, capsys):
    assert main([str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "none.pt does not exist" in capsys.readouterr().err
    model = ReIDModel.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="exporter='tflite' is unknown"):
        export_onnx(model, tmp_path / "x.onnx", exporter="tflite")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=3)
    assert not list(tmp_path.glob("*.onnx*"))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_vit_export_matches_pytorch(tmp_path, capsys, exporter):
    """A ViT-S with the IBN convolution stem (one block, 32x16 input, 0.5/0.5 normalisation): the graph
    matches PyTorch, and the export names the normalisation its input needs."""
    pytest.importorskip("timm")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import TINY, compose_config

    cfg = compose_config([*TINY, f"data_root={tmp_path}", "backbone=vit_small_ics", "backbone.depth=1",
                          "input.height=32", "input.width=16", "input.mean=[0.5,0.5,0.5]", "input.std=[0.5,0.5,0.5]"])
    torch.manual_seed(0)
    net = instantiate(cfg.backbone).train()
    with torch.no_grad():  # move the BatchNorm statistics off their initial values
        for _ in range(3):
            net(torch.randn(8, 3, 32, 16))
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": net.state_dict(), "epoch": 1, "metrics": {"mAP": 1.0},
                "config": OmegaConf.to_container(cfg, resolve=True)}, checkpoint)
    out = tmp_path / "vit.onnx"
    assert main([str(checkpoint), "--onnx", str(out), "--exporter", exporter]) == 0
    printed = capsys.readouterr().out
    assert "[B, 3, 32, 16] normalised (mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5])" in printed
    assert "output 'features' float32 [B, 384]" in printed
    model = ReIDModel.from_checkpoint(checkpoint, device="cpu")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 16, generator=gen)
        onnx_out = session.run(["features"], {"images": x.numpy()})[0]
        assert np.abs(onnx_out - model.embed_normalized(x).numpy()).max() <= 1e-4
