"""Transforms, the PK sampler and the train/test loaders on tiny hand-built inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mqreid.data.base import ImageItem
from mqreid.data.loader import ImageDataset, ImageReadError, build_test_loader, build_train_loader
from mqreid.data.sampler import PKSampler
from mqreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transform

H, W = 32, 16


def gradient_image(seed: int = 0, size: tuple[int, int] = (20, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- transforms

def test_test_transform_shape_and_normalisation() -> None:
    img = Image.new("RGB", (20, 40), (255, 0, 51))
    out = build_test_transform(H, W)(img)
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 51), IMAGENET_MEAN, IMAGENET_STD)]
    for c in range(3):
        torch.testing.assert_close(out[c], torch.full((H, W), expected[c]), atol=1e-5, rtol=0)


def test_train_transform_shape_and_randomness() -> None:
    torch.manual_seed(0)
    t = build_train_transform(H, W, color_jitter=0.4)
    outs = [t(gradient_image()) for _ in range(4)]
    assert all(o.shape == (3, H, W) and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_train_transform_without_randomness_equals_test_of_mirror() -> None:
    img = gradient_image(1)
    t = build_train_transform(H, W, flip_p=1.0, pad=0, erasing_p=0.0)
    expected = build_test_transform(H, W)(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    torch.testing.assert_close(t(img), expected)


def test_train_transform_erasing_fills_mean() -> None:
    torch.manual_seed(0)
    img = Image.new("RGB", (W, H), (255, 255, 255))
    out = build_train_transform(H, W, flip_p=0.0, pad=0, erasing_p=1.0)(img)
    erased = torch.isclose(out, torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).all(dim=0)
    assert 0 < erased.sum() < H * W


def test_transform_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="erasing_p"):
        build_train_transform(H, W, erasing_p=1.5)
    with pytest.raises(ValueError, match="height and width"):
        build_test_transform(0, W)


# ----------------------------------------------------------------------------- sampler

# 5 identities: id 0 over 3 cameras (9 images), id 1 over 2 cameras, id 2 one camera, id 3 two images, id 4
PIDS = [0] * 9 + [1] * 6 + [2] * 5 + [3] * 2 + [4] * 4
CAMS = [0, 0, 0, 0, 0, 0, 0, 1, 2] + [0, 0, 0, 0, 1, 1] + [3] * 5 + [0, 1] + [2, 2, 5, 5]


def batches_of(sampler: PKSampler, size: int) -> list[list[int]]:
    flat = list(sampler)
    assert len(flat) == len(sampler)
    return [flat[i:i + size] for i in range(0, len(flat), size)]


def test_pk_structure() -> None:
    k, p, iters = 4, 3, 10
    sampler = PKSampler(PIDS, CAMS, batch_size=p * k, num_instances=k, iters=iters, seed=3)
    batches = batches_of(sampler, p * k)
    assert len(batches) == iters and len(sampler) == iters * p * k
    for batch in batches:
        block_pids = []
        for b in range(p):
            block = batch[b * k:(b + 1) * k]
            assert len({PIDS[i] for i in block}) == 1
            block_pids.append(PIDS[block[0]])
        assert len(set(block_pids)) == p  # distinct identities in a batch


def test_identities_cycle_without_replacement() -> None:
    # 5 identities, P = 1: every run of 5 consecutive batches is one permutation of all identities
    sampler = PKSampler(PIDS, CAMS, batch_size=2, num_instances=2, iters=15, seed=1)
    order = [PIDS[b[0]] for b in batches_of(sampler, 2)]
    for cycle in range(3):
        assert sorted(order[5 * cycle:5 * cycle + 5]) == [0, 1, 2, 3, 4]


def test_camera_preference_and_replacement() -> None:
    k = 4
    sampler = PKSampler(PIDS, CAMS, batch_size=5 * k, num_instances=k, iters=20, seed=0)
    cams_of = {pid: {c for p, c in zip(PIDS, CAMS) if p == pid} for pid in set(PIDS)}
    for batch in batches_of(sampler, 5 * k):
        for b in range(5):
            block = batch[b * k:(b + 1) * k]
            pid = PIDS[block[0]]
            # a block covers min(K, #cameras of the identity) cameras
            assert len({CAMS[i] for i in block}) == min(k, len(cams_of[pid]))
            n_images = PIDS.count(pid)
            if n_images >= k:
                assert len(set(block)) == k  # no repeats unless the identity has fewer than K images
            else:
                assert set(block) == {i for i, q in enumerate(PIDS) if q == pid}


def test_sampler_determinism_and_set_epoch() -> None:
    make = lambda seed: PKSampler(PIDS, CAMS, batch_size=8, num_instances=4, iters=6, seed=seed)
    a, b = make(7), make(7)
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b)
    b.set_epoch(1)
    assert list(b) == epoch1
    assert list(make(8)) != list(make(7))


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_slices_union_equals_global_batch(world_size: int) -> None:
    k, p = 2, 4
    full = batches_of(PKSampler(PIDS, CAMS, batch_size=p * k, num_instances=k, iters=5, seed=2), p * k)
    per_rank = p * k // world_size
    shards = [
        batches_of(PKSampler(PIDS, CAMS, p * k, k, 5, seed=2, rank=r, world_size=world_size), per_rank)
        for r in range(world_size)
    ]
    for step, batch in enumerate(full):
        assert sum((shards[r][step] for r in range(world_size)), []) == batch


def test_sampler_errors_and_few_identities() -> None:
    with pytest.raises(ValueError, match="pids must be >= 0"):
        PKSampler([0, -1], [0, 0], batch_size=2, num_instances=1, iters=1)
    with pytest.raises(ValueError, match=r"batch_size \(12\).*num_instances \(4\).*world size \(2\)"):
        PKSampler(PIDS, CAMS, batch_size=12, num_instances=4, iters=1, world_size=2)
    with pytest.warns(UserWarning, match="only 2 identities"):
        sampler = PKSampler([0, 0, 1], [0, 1, 0], batch_size=8, num_instances=2, iters=3)
    pids = [0, 0, 1]
    for batch in batches_of(sampler, 8):
        block_pids = [pids[i] for i in batch[::2]]
        assert sorted(block_pids) == [0, 0, 1, 1]  # P = 4 blocks: each of the 2 identities twice


# ----------------------------------------------------------------------------- loaders

@pytest.fixture
def image_items(tmp_path: Path) -> list[ImageItem]:
    items = []
    for i, (pid, cam) in enumerate(zip(PIDS, CAMS)):
        path = tmp_path / f"{i:03d}.jpg"
        gradient_image(i, (8, 16)).save(path, "JPEG")
        items.append(ImageItem(str(path), 100 + pid, cam))
    return items


def test_train_loader_iterations_and_pseudo_labels(image_items: list[ImageItem]) -> None:
    # pseudo labels differ from the true pids; identity 2 and one image of id 0 are outliers
    labels = np.array([{0: 3, 1: 0, 2: -1, 3: 1, 4: 2}[p] for p in PIDS])
    labels[0] = -1
    torch.manual_seed(0)
    loader = build_train_loader(image_items, labels, transform=build_test_transform(H, W), batch_size=8,
                                num_instances=2, iters=5, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    for images, pids, camids, indices in batches:
        assert images.shape == (8, 3, H, W) and images.dtype == torch.float32
        assert torch.equal(pids, torch.as_tensor(labels[indices.numpy()]))  # pseudo labels, not true pids
        assert (pids >= 0).all() and 0 not in indices.tolist()
        assert camids.tolist() == [CAMS[i] for i in indices.tolist()]
        assert (pids.view(4, 2) == pids.view(4, 2)[:, :1]).all()  # P x K blocks


def test_train_loader_distributed_batch_and_workers_reproducible(image_items: list[ImageItem]) -> None:
    labels = np.array(PIDS)
    kwargs = dict(transform=build_train_transform(H, W), batch_size=8, num_instances=2, iters=3, seed=5,
                  rank=1, world_size=2, num_workers=1)
    runs = [[b for b in build_train_loader(image_items, labels, **kwargs)] for _ in range(2)]
    for (img_a, pid_a, _, idx_a), (img_b, pid_b, _, idx_b) in zip(*runs):
        assert img_a.shape == (4, 3, H, W)
        assert torch.equal(idx_a, idx_b) and torch.equal(img_a, img_b)  # augmentations reproducible


def test_train_loader_rejects_misaligned_labels(image_items: list[ImageItem]) -> None:
    with pytest.raises(ValueError, match="labels has 3 entries for 26 items"):
        build_train_loader(image_items, [0, 1, 2], transform=None, batch_size=4, num_instances=2, iters=1)


@pytest.mark.parametrize("world_size", [1, 3])
def test_test_loader_shards_cover_items_in_order(image_items: list[ImageItem], world_size: int) -> None:
    seen = []
    for rank in range(world_size):
        loader = build_test_loader(image_items, transform=build_test_transform(H, W), batch_size=4, rank=rank,
                                   world_size=world_size)
        for images, pids, camids, indices in loader:
            assert pids.tolist() == [image_items[i].pid for i in indices.tolist()]
            seen += indices.tolist()
    assert seen == list(range(len(image_items)))


def test_corrupt_image_error_names_file(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    gradient_image(0).save(good, "JPEG")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:100])  # truncated JPEG
    ds = ImageDataset([(str(good), 1, 0), (str(bad), 2, 1)], build_test_transform(H, W))
    assert ds[0][0].shape == (3, H, W) and ds[0][1:] == (1, 0, 0)
    with pytest.raises(ImageReadError, match=f"cannot read image {bad}"):
        ds[1]
    with pytest.raises(OSError, match="bad.jpg"):
        next(iter(build_test_loader([(str(bad), 2, 1)], transform=None, batch_size=1)))
