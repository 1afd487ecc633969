"""Feature extraction: order, normalisation, flip averaging and model mode."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mqreid.evaluation import extract_features


def make_model():
    torch.manual_seed(0)
    # Pooling to 1 x 2 keeps left/right apart, so a horizontal flip changes the embedding.
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d((1, 2)), nn.Flatten())


def make_loader(shuffle=False, n=10, batch_size=4):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 8, 6, generator=gen)
    dataset = TensorDataset(images, torch.arange(n) % 3, torch.arange(n) % 2, torch.arange(n))
    return images, DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(1))


def manual_embed(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def test_shape_normalisation_and_index_order():
    model = make_model()
    images, loader = make_loader(shuffle=True)
    feats, indices = extract_features(model, loader, "cpu", progress=False)
    assert feats.shape == (10, 8) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert indices.dtype == torch.int64
    assert sorted(indices.tolist()) == list(range(10)) and indices.tolist() != list(range(10))  # shuffled
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(feats, F.normalize(manual_embed(model, images[indices]), dim=1))


def test_without_normalisation_returns_raw_embeddings():
    model = make_model()
    images, loader = make_loader()
    feats, indices = extract_features(model, loader, torch.device("cpu"), normalize=False, progress=False)
    assert indices.tolist() == list(range(10))
    torch.testing.assert_close(feats, manual_embed(model, images))


def test_flip_averaging_equals_manual_computation():
    model = make_model()
    images, loader = make_loader()
    feats, _ = extract_features(model, loader, "cpu", flip=True, progress=False)
    plain, flipped = manual_embed(model, images), manual_embed(model, images.flip(dims=[3]))
    assert not torch.allclose(plain, flipped)  # the flip matters for this model
    torch.testing.assert_close(feats, F.normalize(plain + flipped, dim=1))


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored(training):
    model = make_model().train(training)
    _, loader = make_loader()
    extract_features(model, loader, "cpu", progress=False)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_eval_mode_is_used_during_extraction():
    model = make_model().train()
    images, loader = make_loader()
    before = model[1].running_mean.clone()
    feats, _ = extract_features(model, loader, "cpu", normalize=False, progress=False)
    torch.testing.assert_close(model[1].running_mean, before)  # BatchNorm statistics untouched
    torch.testing.assert_close(feats, manual_embed(model, images))


def test_bad_batches_and_empty_loader_raise():
    model = make_model()
    bad = DataLoader(TensorDataset(torch.randn(4, 3, 8, 6), torch.arange(4)), batch_size=2)
    with pytest.raises(ValueError, match=r"\(images, pids, camids, indices\)"):
        extract_features(model, bad, "cpu", progress=False)
    with pytest.raises(ValueError, match="no batch"):
        extract_features(model, [], "cpu", progress=False)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        extract_features(nn.Identity(), make_loader()[1], "cpu", progress=False)
