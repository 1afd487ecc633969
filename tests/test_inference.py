"""The inference API: ReIDModel.from_checkpoint, embed / embed_normalized, rank_gallery, the lazy export."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mqreid.inference import ReIDModel, rank_gallery

from tiny_checkpoint import WIDTHS, write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return write_tiny_checkpoint(root / "run" / "checkpoints" / "best.pt", root / "data")


@pytest.fixture(scope="module")
def model(checkpoint):
    return ReIDModel.from_checkpoint(checkpoint, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three RGB images of different sizes, as lossless PNG files and as PIL images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths, pils = [], []
    for i, (h, w) in enumerate([(128, 64), (90, 37), (64, 32)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
        pils.append(Image.fromarray(pixels))
    return paths, pils


def test_from_checkpoint_rebuilds_the_network_and_the_transform(model, checkpoint):
    assert model.input_size == (64, 32)
    assert model.embedding_dim == WIDTHS[-1]
    assert model.config["input"]["height"] == 64 and model.config["backbone"]["arch"] == "small_cnn"
    assert model.path == str(checkpoint)
    assert not model.network.training and model.device == torch.device("cpu")
    state = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.network.state_dict().items())
    assert "embedding_dim=16" in repr(model)


def test_paths_pil_images_and_uint8_tensors_give_the_same_features(model, images):
    paths, pils = images
    tensors = [torch.from_numpy(np.array(p)).permute(2, 0, 1).contiguous() for p in pils]
    by_path = model.embed(paths)
    by_str = model.embed([str(p) for p in paths])
    by_pil = model.embed(pils)
    by_tensor = model.embed(tensors)
    assert by_path.shape == (3, 16) and by_path.dtype == torch.float32 and by_path.device.type == "cpu"
    for other in (by_str, by_pil, by_tensor):
        torch.testing.assert_close(other, by_path, rtol=0, atol=1e-6)
    # single items and a uint8 batch [B, 3, H, W]
    torch.testing.assert_close(model.embed(paths[1]), by_path[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.embed(pils[1]), by_path[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.embed(tensors[2]), by_path[2:3], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.embed(torch.stack([tensors[2], tensors[2]])), by_path[[2, 2]], rtol=0, atol=1e-6)


def test_features_are_normalised_and_batching_does_not_change_them(model, images, checkpoint):
    paths, pils = images
    feats = model.embed(paths * 3)  # 9 images in batches of 2
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(9))
    one_batch = ReIDModel.from_checkpoint(checkpoint, device="cpu", batch_size=64).embed(paths * 3)
    torch.testing.assert_close(feats, one_batch, rtol=0, atol=1e-5)
    assert model.embed([]).shape == (0, 16)


def test_embed_normalized_equals_the_network_forward(model, images):
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.network(x)
    torch.testing.assert_close(model.embed_normalized(x), expected, rtol=0, atol=1e-6)
    _, pils = images
    prepared = torch.stack([model.transform(p) for p in pils])
    torch.testing.assert_close(model.embed_normalized(prepared), model.embed(pils), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.embed_normalized(x.double()), expected, rtol=0, atol=1e-6)


def test_clear_errors(model, tmp_path, checkpoint):
    with pytest.raises(ValueError, match=r"uint8.*embed\(\)"):
        model.embed_normalized(torch.zeros(1, 3, 64, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 32\].*got \[2, 3, 128, 64\]"):
        model.embed_normalized(torch.zeros(2, 3, 128, 64))
    with pytest.raises(ValueError, match="unsqueeze"):
        model.embed_normalized(torch.zeros(3, 64, 32))
    with pytest.raises(TypeError, match="embed"):
        model.embed_normalized(np.zeros((1, 3, 64, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="embed_normalized"):
        model.embed(torch.zeros(1, 3, 64, 32))
    with pytest.raises(ValueError, match=r"RGB pixels \[3, H, W\]"):
        model.embed(torch.zeros(1, 64, 32, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        model.embed(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="item 1 is a int"):
        model.embed([tmp_path / "missing.jpg", 3])
    with pytest.raises(FileNotFoundError, match="nothing.pt does not exist"):
        ReIDModel.from_checkpoint(tmp_path / "nothing.pt")

    state = torch.load(checkpoint, weights_only=True)
    state["config"]["backbone"]["widths"] = [8, 32]  # another network than the stored weights
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: the weights do not fit"):
        ReIDModel.from_checkpoint(tmp_path / "mismatch.pt", device="cpu")
    del state["config"]["input"]
    torch.save(state, tmp_path / "noinput.pt")
    with pytest.raises(ValueError, match="noinput.pt.*input.height"):
        ReIDModel.from_checkpoint(tmp_path / "noinput.pt", device="cpu")


def test_rank_gallery_sorts_by_distance():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1)
    idx, dist = rank_gallery(q, g, topk=5, chunk_size=3)
    assert idx.shape == dist.shape == (4, 5) and idx.dtype == torch.int64
    full = torch.cdist(q, g).square()
    expected = torch.argsort(full, dim=1, stable=True)[:, :5]
    assert torch.equal(idx, expected)
    torch.testing.assert_close(dist, full.gather(1, expected), atol=1e-5, rtol=0)
    assert (dist[:, 1:] >= dist[:, :-1]).all()
    cos_idx, cos_dist = rank_gallery(q.numpy(), g.numpy(), topk=None, metric="cosine")
    assert cos_idx.shape == (4, 30) and torch.equal(cos_idx[:, :5], expected)  # same order on the sphere
    torch.testing.assert_close(cos_dist, 1 - (q @ g.T).gather(1, cos_idx), atol=1e-5, rtol=0)
    assert rank_gallery(q, g[:3], topk=10)[0].shape == (4, 3)  # at most G
    ties, _ = rank_gallery(torch.zeros(1, 2), torch.ones(4, 2))
    assert ties.tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="topk"):
        rank_gallery(q, g, topk=0)
    with pytest.raises(ValueError, match="metric"):
        rank_gallery(q, g, metric="manhattan")


def test_import_mqreid_is_cheap_and_exports_the_api_lazily():
    code = "import sys, mqreid; print(sorted(m for m in ('torch', 'numpy', 'mqreid.inference') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    import mqreid

    assert mqreid.ReIDModel is ReIDModel and mqreid.rank_gallery is rank_gallery
    assert {"ReIDModel", "rank_gallery"} <= set(dir(mqreid))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mqreid.nothing  # noqa: B018
