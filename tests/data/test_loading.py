"""Transforms, the samplers and the train/test loaders on tiny hand-built inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mqreid.data.base import ImageItem
from mqreid.data.loader import (
    CachedBatches,
    ImageCache,
    ImageDataset,
    ImageReadError,
    build_test_loader,
    build_train_loader,
)
from mqreid.data.sampler import (
    CameraRoundRobinSampler,
    RandomMultipleGallerySampler,
    sample_key,
)
from mqreid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transform,
    build_train_transform,
    split_stages,
)

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


def test_random_erasing_draws_the_aspect_uniformly() -> None:
    """The original draws the aspect ratio uniformly in [0.3, 1/0.3] and the area fraction uniformly in
    [0.02, 0.4], retrying until the box fits; torchvision draws the aspect log-uniformly. Compared with a
    plain-loop simulation of the original's rule (numpy RNG) on a 256 x 128 image."""
    from mqreid.data.transforms import RandomErasing

    def original(rng, height=256, width=128):
        for _ in range(100):
            target = height * width * rng.uniform(0.02, 0.4)
            aspect = rng.uniform(0.3, 1 / 0.3)
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if h < height and w < width:
                return h, w

    rng = np.random.default_rng(0)
    ref = np.array([original(rng) for _ in range(6000)], dtype=float)
    torch.manual_seed(0)
    erase = RandomErasing(p=1.0)
    boxes = [erase.box(256, 128) for _ in range(6000)]
    ours = np.array([(h, w) for _, _, h, w in boxes], dtype=float)
    for stat in (lambda b: b[:, 0] / b[:, 1], lambda b: b[:, 0] * b[:, 1]):
        assert stat(ours).mean() == pytest.approx(stat(ref).mean(), rel=0.03)
        assert np.median(stat(ours)) == pytest.approx(np.median(stat(ref)), rel=0.05)
    log_uniform_mean = (1 / 0.3 - 0.3) / math.log(1 / 0.3 ** 2)  # what torchvision's draw would give, unclipped
    assert (ours[:, 0] / ours[:, 1]).mean() > log_uniform_mean + 0.2
    assert all(0 <= t and t + h <= 256 and 0 <= left and left + w <= 128 for t, left, h, w in boxes)


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


def batches_of(sampler, size: int) -> list[list[int]]:
    flat = [index for index, _ in sampler]
    assert len(flat) == len(sampler)
    return [flat[i:i + size] for i in range(0, len(flat), size)]


def test_pk_structure() -> None:
    k, p, iters = 4, 3, 10
    sampler = CameraRoundRobinSampler(PIDS, CAMS, batch_size=p * k, num_instances=k, iters=iters, seed=3)
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
    sampler = CameraRoundRobinSampler(PIDS, CAMS, batch_size=2, num_instances=2, iters=15, seed=1)
    order = [PIDS[b[0]] for b in batches_of(sampler, 2)]
    for cycle in range(3):
        assert sorted(order[5 * cycle:5 * cycle + 5]) == [0, 1, 2, 3, 4]


def test_camera_preference_and_replacement() -> None:
    k = 4
    sampler = CameraRoundRobinSampler(PIDS, CAMS, batch_size=5 * k, num_instances=k, iters=20, seed=0)
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
    make = lambda seed: CameraRoundRobinSampler(PIDS, CAMS, batch_size=8, num_instances=4, iters=6, seed=seed)
    a, b = make(7), make(7)
    assert list(a) == list(b) == list(a)
    assert [key for _, key in a] == [sample_key(7, 0, i) for i in range(len(a))]
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b)
    b.set_epoch(1)
    assert list(b) == epoch1
    assert list(make(8)) != list(make(7))


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_slices_union_equals_global_batch(world_size: int) -> None:
    k, p = 2, 4
    full = batches_of(CameraRoundRobinSampler(PIDS, CAMS, batch_size=p * k, num_instances=k, iters=5, seed=2), p * k)
    per_rank = p * k // world_size
    shards = [
        batches_of(CameraRoundRobinSampler(PIDS, CAMS, p * k, k, 5, seed=2, rank=r, world_size=world_size), per_rank)
        for r in range(world_size)
    ]
    for step, batch in enumerate(full):
        assert sum((shards[r][step] for r in range(world_size)), []) == batch


def test_sampler_errors_and_few_identities(caplog) -> None:
    with pytest.raises(ValueError, match="pids must be >= 0"):
        CameraRoundRobinSampler([0, -1], [0, 0], batch_size=2, num_instances=1, iters=1)
    with pytest.raises(ValueError, match=r"batch_size \(12\).*num_instances \(4\).*world size \(2\)"):
        CameraRoundRobinSampler(PIDS, CAMS, batch_size=12, num_instances=4, iters=1, world_size=2)
    from mqreid.data import sampler as sampler_module

    sampler_module._said.discard("few ids")
    with caplog.at_level("INFO", logger="mqreid.data.sampler"):
        sampler = CameraRoundRobinSampler([0, 0, 1], [0, 1, 0], batch_size=8, num_instances=2, iters=3)
        CameraRoundRobinSampler([0, 0, 1], [0, 1, 0], batch_size=8, num_instances=2, iters=3)  # a later epoch
    assert caplog.text.count("only 2 identities") == 1  # said once, not every epoch
    pids = [0, 0, 1]
    for batch in batches_of(sampler, 8):
        block_pids = [pids[i] for i in batch[::2]]
        assert sorted(block_pids) == [0, 0, 1, 1]  # P = 4 blocks: each of the 2 identities twice


def segments(stream: list[int], k: int) -> list[list[int]]:
    """Split one pass of the original's sampler into identity segments: an anchor, then K - 1 followers
    (none for a single-image identity)."""
    out, i = [], 0
    while i < len(stream):
        n = 1 if PIDS_RMG.count(PIDS_RMG[stream[i]]) == 1 else k
        out.append(stream[i:i + n])
        i += n
    return out


# the identities above plus id 5 with a single image
PIDS_RMG, CAMS_RMG = PIDS + [5], CAMS + [4]


@pytest.mark.parametrize("k", [2, 4, 8])
def test_random_multiple_gallery_follows_the_original_rules(k: int) -> None:
    """Every rule of Cluster Contrast's RandomMultipleGallerySampler, checked by an explicit loop."""
    sampler = RandomMultipleGallerySampler(PIDS_RMG, CAMS_RMG, batch_size=2 * k, num_instances=k, iters=1, seed=4)
    members = {pid: [i for i, q in enumerate(PIDS_RMG) if q == pid] for pid in set(PIDS_RMG)}
    repeats_seen = {pid: False for pid in members}
    rng = sampler.rng()
    for _ in range(30):
        parts = segments(sampler.one_pass(rng), k)
        # every identity once per pass, in a shuffled order
        assert sorted(PIDS_RMG[seg[0]] for seg in parts) == sorted(members)
        for seg in parts:
            anchor, followers = seg[0], seg[1:]
            pid = PIDS_RMG[anchor]
            assert all(PIDS_RMG[i] == pid for i in followers)
            other_cams = [i for i in members[pid] if CAMS_RMG[i] != CAMS_RMG[anchor]]
            if len(members[pid]) == 1:
                assert followers == []  # a single-image identity: the anchor alone
                continue
            assert len(followers) == k - 1
            pool = other_cams if other_cams else [i for i in members[pid] if i != anchor]  # one-camera fallback
            assert set(followers) <= set(pool)
            if len(pool) >= k:
                assert len(set(followers)) == k - 1  # without replacement
            repeats_seen[pid] |= len(set(followers)) < len(followers)
    # with replacement when the pool is smaller than K (and K - 1 > 1 draws can collide)
    if k == 8:
        assert repeats_seen[3] and repeats_seen[1]
    assert not repeats_seen[5]


def test_random_multiple_gallery_cuts_batches_from_the_flat_stream() -> None:
    k, b = 4, 8
    sampler = RandomMultipleGallerySampler(PIDS_RMG, CAMS_RMG, batch_size=b, num_instances=k, iters=7, seed=1)
    rng, expected = sampler.rng(), []
    while len(expected) < 7:
        flat = sampler.one_pass(rng)  # 5 x 4 + 1 = 21 entries: 2 batches, 5 dropped (drop_last)
        assert len(flat) == 21
        expected += [flat[i:i + b] for i in range(0, len(flat) - b + 1, b)]
    assert batches_of(sampler, b) == expected[:7]
    # a pass shorter than a batch: passes are joined rather than failing
    short = RandomMultipleGallerySampler([0, 0, 1, 1], [0, 1, 0, 1], batch_size=8, num_instances=2, iters=3)
    assert len(batches_of(short, 8)) == 3


def test_samplers_slice_global_batches_per_rank() -> None:
    for cls in (RandomMultipleGallerySampler, CameraRoundRobinSampler):
        whole = list(cls(PIDS, CAMS, batch_size=8, num_instances=2, iters=4, seed=3))
        halves = [list(cls(PIDS, CAMS, 8, 2, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
        rebuilt = [x for step in range(4) for r in range(2) for x in halves[r][4 * step:4 * step + 4]]
        assert rebuilt == whole  # indices and per-sample keys


@pytest.mark.parametrize("cls", [RandomMultipleGallerySampler, CameraRoundRobinSampler])
def test_max_per_cluster_bounds_every_global_batch_on_every_rank(cls) -> None:
    """The centroid memory's pass count: the largest count of one identity in a global batch of the epoch, the
    same whatever the rank and world size (not a per-rank maximum times the processes)."""
    pids = np.repeat(np.arange(6), 5)
    cams = np.tile(np.arange(5), 6)
    one = cls(pids, cams, batch_size=12, num_instances=4, iters=6, seed=1)
    counts = [np.bincount(pids[batch]).max() for batch in one.global_batches()]
    assert one.max_per_cluster() == max(counts) >= 4
    assert all(cls(pids, cams, 12, 4, 6, seed=1, rank=r, world_size=3).max_per_cluster() == max(counts)
               for r in range(3))


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
                                num_instances=2, iters=5, seed=0, sampler="camera_round_robin")
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    assert loader.max_per_cluster == max(int(torch.bincount(pids).max()) for _, pids, _, _ in batches)
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


def test_augmentation_depends_on_the_sample_not_the_process_or_worker(image_items: list[ImageItem]) -> None:
    """The same global batch, read by 1 process or by 2 ranks, with 0 or 2 workers, is the same tensor."""
    labels = np.array(PIDS)
    common = dict(transform=build_train_transform(H, W, color_jitter=0.4), batch_size=8, num_instances=2,
                  iters=3, seed=5, epoch=2)
    whole = [b[0] for b in build_train_loader(image_items, labels, num_workers=0, **common)]
    ranks = [[b[0] for b in build_train_loader(image_items, labels, rank=r, world_size=2, num_workers=2, **common)]
             for r in range(2)]
    for step, images in enumerate(whole):
        assert torch.equal(images, torch.cat([ranks[0][step], ranks[1][step]]))
    other_epoch = [b[0] for b in build_train_loader(image_items, labels, **{**common, "epoch": 3})]
    assert not torch.equal(other_epoch[0], whole[0])
    with pytest.raises(ValueError, match="train.sampler=bogus: expected one of random_multiple_gallery"):
        build_train_loader(image_items, labels, sampler="bogus", **common)


@pytest.mark.parametrize("cached", [False, True])
def test_one_train_loader_serves_every_epoch_with_the_same_workers(image_items: list[ImageItem], cached: bool) -> None:
    """A run's TrainLoader keeps its workers across epochs and still gives each epoch exactly the batches a
    fresh single-process loader of that epoch's labels gives (labels travel with the indices)."""
    from mqreid.data.loader import TrainLoader

    labels = [np.array([{0: 3, 1: 0, 2: -1, 3: 1, 4: 2}[p] for p in PIDS]), np.array([p % 3 for p in PIDS])]
    common = dict(transform=build_train_transform(H, W), batch_size=8, num_instances=2, iters=3, seed=0,
                  cache=cache_for(image_items) if cached else None)
    run = TrainLoader(image_items, num_workers=2, **common)
    epochs, workers = [], []
    for epoch, epoch_labels in enumerate(labels):
        epochs.append(list(run.epoch(epoch_labels, epoch)))
        workers.append([w.pid for w in run.loader._iterator._workers])
    assert workers[0] == workers[1]
    for epoch, (epoch_labels, got) in enumerate(zip(labels, epochs)):
        fresh = list(build_train_loader(image_items, epoch_labels, epoch=epoch, num_workers=0, **common))
        for a, b in zip(got, fresh, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert all(torch.equal(pids, torch.as_tensor(epoch_labels[indices.numpy()])) for _, pids, _, indices in got)


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


# ----------------------------------------------------------------------------- in-memory images

def cache_for(items, height: int = H, width: int = W, max_bytes=None) -> ImageCache:
    cache = ImageCache(split_stages(build_test_transform(height, width)).resize, max_bytes=max_bytes)
    assert cache.add(items)
    return cache


def test_stages_cut_only_the_transforms_built_here() -> None:
    train = split_stages(build_train_transform(H, W, color_jitter=0.4))
    assert train.resize.size == [H, W] and len(train.per_sample.transforms) == 4 and train.erasing is not None
    test = split_stages(build_test_transform(H, W))
    assert test.per_sample is None and test.erasing is None
    assert split_stages(lambda image: image) is None
    assert split_stages(v2.Compose([v2.ToImage(), v2.Resize((H, W))])) is None
    unscaled = build_test_transform(H, W)
    unscaled.transforms[2] = v2.ToDtype(torch.float32, scale=False)  # not what finish_batch computes
    assert split_stages(unscaled) is None


def test_finish_batch_is_torchvision_bit_for_bit_with_constants_kept() -> None:
    """The device-side conversion, normalisation and erasing equal torchvision's per-image steps exactly, and
    the constants are made once per device (a CUDA copy from a Python list waits on the host)."""
    from mqreid.data.loader import device_constants, finish_batch

    stages = split_stages(build_train_transform(H, W, erasing_p=1.0))
    images = torch.randint(0, 256, (5, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[1, 2, 5, 4], [-1, -1, -1, -1], [0, 0, H - 1, W - 1], [3, 3, 1, 1], [-1, -1, -1, -1]])
    expected = []
    for image, box in zip(images, boxes.tolist()):
        out = stages.to_tensor(image).as_subclass(torch.Tensor)
        expected.append(stages.erasing.erase(out, None if box[0] < 0 else tuple(box)))
    got = finish_batch(images, boxes, stages)
    assert got.dtype == torch.float32 and torch.equal(got, torch.stack(expected))
    first = device_constants(stages, torch.device("cpu"))
    assert all(a is b for a, b in zip(first, device_constants(stages, torch.device("cpu"))))


@pytest.mark.parametrize("epoch", [0, 1, 4])
def test_cached_batches_are_the_file_batches(image_items: list[ImageItem], epoch: int) -> None:
    """Every random step on (flip, pad + crop, colour jitter, erasing): the same draws and the same
    tensors, bit for bit, whether the images come from the files or from memory."""
    labels = np.array(PIDS)
    cache = cache_for(image_items)
    common = {"transform": build_train_transform(H, W, color_jitter=0.4), "batch_size": 8, "num_instances": 2,
              "iters": 6, "seed": 11, "epoch": epoch}
    files = list(build_train_loader(image_items, labels, **common))
    cached_loader = build_train_loader(image_items, labels, cache=cache, **common)
    assert isinstance(cached_loader.dataset, CachedBatches) and len(cached_loader) == 6
    memory = list(cached_loader)
    for a, b in zip(files, memory, strict=True):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and torch.equal(x, y)
    images = torch.cat([b[0] for b in memory])
    erased = torch.isclose(images, torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).all(dim=1).flatten(1)
    assert 0 < (erased.sum(1) > 20).sum() < len(images)  # some images erased, not all: the draws vary


def test_cached_augmentation_depends_on_the_sample_not_the_process_or_worker(image_items: list[ImageItem]) -> None:
    labels = np.array(PIDS)
    cache = cache_for(image_items)
    common = {"transform": build_train_transform(H, W, color_jitter=0.4), "batch_size": 8, "num_instances": 2,
              "iters": 3, "seed": 5, "epoch": 2, "cache": cache}
    whole = [b[0] for b in build_train_loader(image_items, labels, num_workers=0, **common)]
    ranks = [[b[0] for b in build_train_loader(image_items, labels, rank=r, world_size=2, num_workers=2, **common)]
             for r in range(2)]
    for step, images in enumerate(whole):
        assert torch.equal(images, torch.cat([ranks[0][step], ranks[1][step]]))


@pytest.mark.parametrize("world_size", [1, 3])
def test_cached_test_batches_are_the_file_batches(image_items: list[ImageItem], world_size: int) -> None:
    cache, transform = cache_for(image_items), build_test_transform(H, W)
    for rank in range(world_size):
        files = list(build_test_loader(image_items, transform=transform, batch_size=4, rank=rank,
                                       world_size=world_size))
        memory = list(build_test_loader(image_items, transform=transform, batch_size=4, rank=rank,
                                        world_size=world_size, cache=cache))
        for a, b in zip(files, memory, strict=True):
            assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))
    workers = list(build_test_loader(image_items, transform=transform, batch_size=4, cache=cache, num_workers=2))
    alone = list(build_test_loader(image_items, transform=transform, batch_size=4, cache=cache))
    for a, b in zip(workers, alone, strict=True):  # the gathers in loader workers, in order
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_cache_limit_and_the_per_file_path(image_items: list[ImageItem]) -> None:
    one = H * W * 3
    cache = ImageCache(split_stages(build_test_transform(H, W)).resize, max_bytes=10 * one)
    assert not cache.add(image_items) and cache.nbytes == 0  # 26 images do not fit in 10
    assert cache.add(image_items[:10]) and cache.nbytes == 10 * one
    assert cache.add(image_items[:5]) and cache.nbytes == 10 * one  # already held: nothing added
    transform = build_test_transform(H, W)
    assert cache.holds(image_items[:10], transform) is not None
    assert cache.holds(image_items, transform) is None  # not every item is held
    assert cache.holds(image_items[:10], build_test_transform(2 * H, W)) is None  # another size
    assert cache.holds(image_items[:10], lambda image: image) is None  # a transform of another kind
    loader = build_test_loader(image_items, transform=transform, batch_size=4, cache=cache)
    assert isinstance(loader.dataset, ImageDataset)  # the files


def test_cache_blocks_read_as_one_and_adding_never_copies_the_blocks_before(image_items: list[ImageItem]) -> None:
    """Each add is a block of its own; a batch that spans blocks reads the same images as one cache of all."""
    whole, parts = cache_for(image_items), cache_for(image_items[:10])
    first = parts.blocks[0]
    assert parts.add(image_items[10:17]) and parts.add(image_items) and len(parts.blocks) == 3
    assert parts.blocks[0] is first and parts.nbytes == whole.nbytes and len(parts) == len(whole)
    rows = torch.tensor([parts.rows[str(item[0])] for item in image_items[::-1]])
    expected = whole.gather(torch.tensor([whole.rows[str(item[0])] for item in image_items[::-1]]))
    assert torch.equal(parts.gather(rows), expected)


def test_shared_images_stay_mapped_when_more_are_added(image_items: list[ImageItem], tmp_path: Path) -> None:
    """share(): the reader, which reserved its rows without decoding, maps the writer's images; the query
    and gallery blocks added afterwards leave that mapping in place (they do not copy it)."""
    import threading

    barrier = threading.Barrier(2)
    writer, reader = cache_for(image_items[:12]), ImageCache(split_stages(build_test_transform(H, W)).resize)
    assert reader.add(image_items[:12], decode=False)
    target = tmp_path / "images.u8"
    thread = threading.Thread(target=reader.share, args=(target, False, barrier.wait))
    thread.start()
    writer.share(target, True, barrier.wait)
    thread.join()
    assert not target.exists()  # the name is gone, the mappings stay
    mapped = reader.blocks[0]
    assert torch.equal(mapped, writer.blocks[0])
    assert reader.add(image_items[12:]) and reader.blocks[0] is mapped
    assert torch.equal(reader.gather(torch.arange(len(image_items))), cache_for(image_items).gather(
        torch.arange(len(image_items))))


def test_reserved_rows_take_no_memory_in_deterministic_mode() -> None:
    """add(decode=False) reserves rows for images another process decodes: even under
    torch.use_deterministic_algorithms, which fills every torch.empty, the untouched block commits no memory."""
    import resource

    cache = ImageCache(split_stages(build_test_transform(256, 128)).resize)
    items = [(f"/nowhere/{i}.jpg", 0, 0) for i in range(8000)]  # 8000 x 96 KiB = 750 MiB if committed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    torch.use_deterministic_algorithms(True)
    try:
        assert cache.add(items, decode=False)
    finally:
        torch.use_deterministic_algorithms(False)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert cache.nbytes == 8000 * 256 * 128 * 3 and grown_mib < 100, grown_mib


def test_cache_names_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=f"cannot read image {bad}"):
        cache_for([ImageItem(str(bad), 0, 0)])
