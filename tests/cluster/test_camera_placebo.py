"""The placebo of docs/benchmark-v2.md: camera centring with the training images' camera ids permuted
(``train.camera_permutation_seed``), on tiny fabricated features (nothing is rendered or trained)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mqreid.cluster import camera_centering, permute_cameras
from mqreid.data.base import ImageItem
from mqreid.engine.trainer import Trainer
from mqreid.engine.validate import config_problems
from mqreid.evaluation.camera_bias import wrong_identity_camera_excess

from conftest import compose_config


def offset_features(seed: int = 0, ids: int = 20, per_id: int = 6, cams: int = 3, dim: int = 16):
    """Identities as Gaussian clusters on random cameras, each camera adding a constant shift."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(ids), per_id)
    cameras = rng.integers(0, cams, len(pids))
    x = rng.normal(size=(ids, dim))[pids] + 0.5 * rng.normal(size=(len(pids), dim))
    x += 2.0 * rng.normal(size=(cams, dim))[cameras]
    return torch.from_numpy(x.astype(np.float32)), pids, cameras


def test_permutation_shuffles_ids_across_images_deterministically():
    cameras = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 5])
    a, b, c = permute_cameras(cameras, 0), permute_cameras(cameras, 0), permute_cameras(cameras, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # fixed by the seed
    assert np.array_equal(np.sort(a), np.sort(cameras))  # every "camera" keeps its number of images
    assert not np.array_equal(a, cameras) and np.array_equal(cameras, [0, 0, 0, 0, 1, 1, 2, 2, 2, 5])  # a copy
    with pytest.raises(ValueError, match=r"permute_cameras: expected camids \[N\], got shape \(2, 5\)"):
        permute_cameras(cameras.reshape(2, 5), 0)


def test_centring_with_permuted_ids_removes_no_camera_offset():
    x, pids, cameras = offset_features()
    assert wrong_identity_camera_excess(x, pids, cameras) > 0.4
    true_ids = camera_centering(x, torch.from_numpy(cameras))
    placebo = camera_centering(x, torch.from_numpy(permute_cameras(cameras, 0)))
    assert wrong_identity_camera_excess(true_ids, pids, cameras) < 0.1
    assert wrong_identity_camera_excess(placebo, pids, cameras) > 0.4


class Recorder:
    """A clusterer that keeps the features it is given and labels every image 0."""

    def fit_predict(self, features):
        self.features = features
        return np.zeros(len(features), dtype=np.int64)


def clustered_features(seed, centering=True):
    """The features Trainer.cluster hands to the clusterer, on a stand-in trainer of fabricated images."""
    x, pids, cameras = offset_features()
    items = [ImageItem(f"img{i}.png", int(p), int(c)) for i, (p, c) in enumerate(zip(pids, cameras))]
    cfg = OmegaConf.create({"train": {"camera_centering": centering, "camera_permutation_seed": seed}})
    stand_in = SimpleNamespace(is_main=True, env=SimpleNamespace(enabled=False, is_main=True), cores=1, cfg=cfg,
                               dataset=SimpleNamespace(train=items), clusterer=Recorder(), device="cpu")
    Trainer.cluster(stand_in, x)
    return stand_in.clusterer.features, x, cameras


def test_the_trainer_centres_with_the_permuted_ids_when_a_seed_is_set():
    seen, x, cameras = clustered_features(seed=3)
    assert torch.allclose(seen, camera_centering(x, torch.from_numpy(permute_cameras(cameras, 3))))
    seen, x, cameras = clustered_features(seed=None)
    assert torch.allclose(seen, camera_centering(x, torch.from_numpy(cameras)))


def test_the_seed_is_validated_and_needs_centring():
    assert config_problems(compose_config(["train.camera_centering=true", "train.camera_permutation_seed=0"])) == []
    problems = config_problems(compose_config(["train.camera_centering=false", "train.camera_permutation_seed=4"]))
    assert problems == ["train.camera_permutation_seed=4: acts only with train.camera_centering=true (it permutes "
                        "the camera ids centring uses)"]
    problems = config_problems(compose_config(["train.camera_centering=true", "train.camera_permutation_seed=-1"]))
    assert problems == ["train.camera_permutation_seed=-1: expected null or an integer >= 0"]
