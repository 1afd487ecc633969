"""Image dataset and the train (PK-sampled, pseudo-labelled) and test (sequential, sharded) loaders."""

from __future__ import annotations

from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from torchvision.transforms import v2

from .base import DatasetError, ImageItem
from .image_check import READ_ERRORS
from .sampler import SAMPLERS
from .transforms import Stages, split_stages

# appended to every read error: what the check at load time covers, and why a run cannot drop the file
READ_ADVICE = (
    "The check made when the dataset was built reads each file's header (and a JPEG's last bytes) only, so "
    "damage inside the image data, or a file changed since, shows up here. A file that fails during a run is not "
    "left out, even with dataset.on_bad_image=skip: dropping it mid-epoch would change the run. Replace or "
    "delete the file and start the run again."
)


class ImageReadError(DatasetError, OSError):
    """An image file could not be read or decoded."""


def read_image(path: str) -> Image.Image:
    """The image at ``path`` as an RGB PIL image; :class:`ImageReadError` naming the file if it cannot be."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except READ_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: {e}. {READ_ADVICE}") from e


def same_resize(a: v2.Resize, b: v2.Resize) -> bool:
    return (list(a.size), a.interpolation, a.max_size, a.antialias) == (list(b.size), b.interpolation, b.max_size,
                                                                        b.antialias)


class ImageCache:
    """Images decoded once and resized by a transform's first step, kept in memory: uint8 [H, W, 3] each.

    The resize is deterministic, so an image read from the cache and then given the rest of the transform
    (:class:`~mqreid.data.transforms.Stages`) is exactly the image the whole transform makes of the file.
    :meth:`add` takes a list of items only while the total stays within ``max_bytes``; loaders read the
    items it does not hold from their files. Each :meth:`add` keeps its images in a block of its own (one
    tensor, which loader workers share) and never copies the blocks before it, so the training images that
    :meth:`share` maps stay mapped when query and gallery are added; :meth:`gather` reads rows across blocks.
    """

    def __init__(self, resize: v2.Resize, max_bytes: int | None = None, threads: int = 1) -> None:
        self.resize, self.max_bytes, self.threads = resize, max_bytes, max(1, threads)
        self.blocks: list[torch.Tensor] = []  # uint8 [n_b, H, W, 3]
        self.starts: list[int] = []  # the first row of each block
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(block.numel() for block in self.blocks)

    def image_bytes(self) -> int:
        """Bytes one image takes."""
        height, width = self.resize.size
        return height * width * 3

    def add(self, items: Sequence[ImageItem | tuple[str, int, int]], decode: bool = True) -> bool:
        """Decode and keep the images of ``items`` not held yet if they all fit; whether they are all held.

        ``decode=False`` reserves the rows without reading the files, for a process that receives the images
        from another one (:meth:`share`)."""
        paths = self._new_paths(items)
        if self._shortfall(paths) > 0:
            return False
        if not paths:
            return True
        # Untouched pages of an empty array take no memory (decode=False costs nothing), and each image is
        # decoded straight into its row: the peak is the block itself. numpy allocates it: under
        # torch.use_deterministic_algorithms (train.deterministic) torch.empty fills every new tensor, which
        # would commit the whole block in each process that only maps the shared copy (ImageCache.share).
        block = torch.from_numpy(np.empty((len(paths), *self.resize.size, 3), dtype=np.uint8))
        if decode:
            def put(row: int, path: str) -> None:
                block[row].numpy()[...] = np.asarray(self.resize(read_image(path)))

            with ThreadPoolExecutor(self.threads) as pool:  # PIL decodes and resizes without the GIL
                list(pool.map(put, range(len(paths)), paths))
        start = len(self)  # a file that fails to decode has raised above and left the cache as it was
        self.blocks.append(block)
        self.starts.append(start)
        self.rows.update((path, start + j) for j, path in enumerate(paths))
        return True

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The images of cache rows ``rows`` (long [B]): uint8 [B, H, W, 3]."""
        if len(rows):  # a batch of one split (the usual case): its block indexed once, as one tensor would be
            first = bisect_right(self.starts, int(rows.min())) - 1
            if self.starts[first] + len(self.blocks[first]) > int(rows.max()):
                return self.blocks[first][rows - self.starts[first]]
        which = torch.searchsorted(torch.tensor(self.starts, dtype=torch.long), rows, right=True) - 1
        out = torch.empty(len(rows), *self.resize.size, 3, dtype=torch.uint8)
        for b in which.unique().tolist():
            take = which == b
            out[take] = self.blocks[b][rows[take] - self.starts[b]]
        return out

    def shortfall(self, items: Sequence[ImageItem | tuple[str, int, int]]) -> int:
        """Bytes by which holding the images of ``items`` not held yet would exceed ``max_bytes`` (<= 0: they
        fit)."""
        return self._shortfall(self._new_paths(items))

    def _new_paths(self, items: Sequence[ImageItem | tuple[str, int, int]]) -> list[str]:
        return list(dict.fromkeys(str(item[0]) for item in items if str(item[0]) not in self.rows))

    def _shortfall(self, paths: list[str]) -> int:
        if self.max_bytes is None:
            return -1
        return self.nbytes + len(paths) * self.image_bytes() - self.max_bytes

    def share(self, path: str | Path, writer: bool, barrier: Callable[[], None]) -> None:
        """Let the processes of one node hold a single copy of the images held so far: the ``writer`` writes
        them to ``path`` (node-local), every process maps the file (``torch.from_file(shared=True)``: the
        pages are the page cache's, shared) as one block, and the writer removes the name (the mappings stay
        valid). Every process must have made the same :meth:`add` calls (the others with ``decode=False``)
        and call this together; blocks added later are each process's own."""
        path = Path(path)
        if writer:
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                for block in self.blocks:
                    block.numpy().tofile(f)
            tmp.replace(path)
        barrier()
        if self.blocks:
            mapped = torch.from_file(str(path), shared=True, size=self.nbytes, dtype=torch.uint8)
            self.blocks, self.starts = [mapped.view(len(self), *self.resize.size, 3)], [0]
        barrier()
        if writer:
            path.unlink(missing_ok=True)

    def holds(self, items: Sequence[ImageItem | tuple[str, int, int]], transform: Callable) -> Stages | None:
        """The stages of ``transform`` if this cache can serve it for every item of ``items``, else None."""
        stages = split_stages(transform)
        if stages is None or not same_resize(stages.resize, self.resize):
            return None
        return stages if all(str(item[0]) in self.rows for item in items) else None


_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}


def device_constants(stages: Stages, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The normalisation's mean and std ([3, 1, 1]) and the erasing value ([1, 3, 1, 1] or None) of ``stages``
    as float32 tensors on ``device``, made once per device and kept.

    torchvision's ``Normalize`` builds its mean and std on the image's device at every call, and a CUDA tensor
    made from a Python list is a pageable copy that waits on the host; a cached batch would pay that twice per
    step (three times with erasing)."""
    normalize = stages.to_tensor.transforms[1]
    value = tuple(stages.erasing.value.tolist()) if stages.erasing is not None else None
    key = (tuple(normalize.mean), tuple(normalize.std), value, torch.device(device))
    if key not in _CONSTANTS:
        def make(numbers, shape):
            return torch.tensor(numbers, dtype=torch.float32).view(shape).to(device)

        _CONSTANTS[key] = (make(normalize.mean, (-1, 1, 1)), make(normalize.std, (-1, 1, 1)),
                           make(value, (1, -1, 1, 1)) if value is not None else None)
    return _CONSTANTS[key]


def finish_batch(images: torch.Tensor, boxes: torch.Tensor | None, stages: Stages) -> torch.Tensor:
    """The last steps of a cached batch, on the device ``images`` is on: uint8 [B, 3, H, W] -> conversion and
    normalisation, then random erasing of each image's box (``boxes`` [B, 4] = top, left, h, w; a row of -1:
    none). The values are those of the per-image transform, bit for bit: the arithmetic of torchvision's
    ``ToDtype(float32, scale=True)`` and ``Normalize``, with their constants kept on the device
    (:func:`device_constants`), so the step never waits on the host here."""
    mean, std, value = device_constants(stages, images.device)
    images = images.contiguous().to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
    if value is None or boxes is None or boxes.numel() == 0:
        return images
    top, left, h, w = (boxes[:, j].view(-1, 1, 1) for j in range(4))
    height, width = images.shape[-2:]
    ys = torch.arange(height, device=images.device).view(1, -1, 1)
    xs = torch.arange(width, device=images.device).view(1, 1, -1)
    inside = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w) & (h > 0)  # [B, H, W]
    return torch.where(inside.unsqueeze(1), value, images)


class DeviceBatches:
    """A loader whose batches are moved to ``device`` and finished there.

    Cached batches arrive as uint8 with their erasing boxes (:class:`CachedBatches` with ``finish=False``):
    the copy to the device is a quarter of the float32 bytes (pinned and ``non_blocking`` on CUDA), and
    conversion, normalisation and erasing run on the device (:func:`finish_batch`). Batches from files
    arrive finished and are only moved. Yields ``(images, pids, camids, indices)`` with the images on
    ``device`` and the rest as the loader gave them.
    """

    def __init__(self, loader: DataLoader, device: torch.device | str = "cpu", stages: Stages | None = None,
                 max_per_cluster: int | None = None) -> None:
        self.loader, self.device, self.stages = loader, torch.device(device), stages
        # a training loader's bound on the images of one pseudo identity in a global batch (sampler's)
        self.max_per_cluster = max_per_cluster

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, pids, camids, indices, *boxes in self.loader:
            images = images.to(self.device, non_blocking=True)
            if images.dtype == torch.uint8 and self.stages is not None:
                box = boxes[0].to(self.device, non_blocking=True) if boxes else None
                images = finish_batch(images, box, self.stages)
            yield images, pids, camids, indices


class CachedBatches(Dataset):
    """Whole batches from an :class:`ImageCache`: ``dataset[[i, ...]]`` or ``dataset[[(i, key), ...]]`` ->
    ``(images [B, 3, H, W], pids [B], camids [B], indices [B])``, the batch a DataLoader over
    :class:`ImageDataset` with the same transform collates.

    Each image gets its own draws for the random steps of the transform, after seeding torch's RNG with its
    key (as :class:`ImageDataset` does); the steps then run on the whole uint8 batch
    (:class:`~mqreid.data.augment.BatchAugment`), as do conversion and normalisation, and erasing fills
    each image's box. Without random steps (a test transform) a batch is one gather and one normalisation.

    ``finish=False`` stops before conversion: batches are ``(uint8 images, pids, camids, indices, boxes
    [B, 4])`` and :func:`finish_batch` (run by :class:`DeviceBatches` on the model's device) does the rest.
    """

    def __init__(self, cache: ImageCache, items: Sequence[ImageItem], stages: Stages, indices: Sequence[int],
                 finish: bool = True) -> None:
        self.cache, self.stages, self.finish = cache, stages, finish
        self.rows = torch.tensor([cache.rows[str(item[0])] for item in items], dtype=torch.long)
        self.pids = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        self.camids = torch.tensor([int(item[2]) for item in items], dtype=torch.long)
        self.indices = torch.tensor(list(indices), dtype=torch.long)
        self.random = stages.per_sample is not None or stages.erasing is not None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch: Sequence[int | tuple[int, int] | tuple[int, int, int]]):
        positions = torch.tensor([entry[0] if isinstance(entry, tuple) else entry for entry in batch])
        images = self.cache.gather(self.rows[positions]).permute(0, 3, 1, 2)  # uint8 [B, 3, H, W]
        boxes = []
        if self.random:
            images, boxes = self._augment(images, batch)
        box_rows = torch.tensor([box if box is not None else (-1, -1, -1, -1) for box in boxes],
                                dtype=torch.long).reshape(-1, 4)
        # (position, key, label) entries carry the epoch's pseudo label (TrainLoader); else the item's id
        pids = torch.tensor([entry[2] for entry in batch]) if batch and isinstance(batch[0], tuple) and \
            len(batch[0]) == 3 else self.pids[positions]
        if self.finish:
            images = finish_batch(images, box_rows, self.stages)
            return images, pids, self.camids[positions], self.indices[positions]
        return images.contiguous(), pids, self.camids[positions], self.indices[positions], box_rows

    def _augment(self, images: torch.Tensor, batch: Sequence[int | tuple[int, int]]) -> tuple[torch.Tensor, list]:
        """The random steps before normalisation, and the erasing boxes: each image's draws in the per-image
        transform's order (after seeding torch's RNG with its key), then the batched steps all at once (or,
        for steps that cannot be batched, each image's steps as it is drawn)."""
        stages, draws, boxes, pictures = self.stages, [], [], []
        height, width = stages.resize.size
        for j, entry in enumerate(batch):
            if isinstance(entry, tuple):
                torch.default_generator.manual_seed(entry[1])
            if stages.batched is not None:
                draws.append(stages.batched.draw(height, width))
            elif stages.per_sample is not None:
                pictures.append(stages.per_sample(images[j]))
            if stages.erasing is not None:
                boxes.append(stages.erasing.draw(height, width))
        if stages.batched is not None:
            return stages.batched.apply(images, draws), boxes
        return (torch.stack(pictures).as_subclass(torch.Tensor) if pictures else images), boxes


class ImageDataset(Dataset):
    """Items (path, pid, camid) -> ``(image, pid, camid, index)``; the image is read with PIL as RGB.

    A file that cannot be decoded (e.g. a truncated JPEG: mqreid leaves PIL's ``LOAD_TRUNCATED_IMAGES``
    False, so no partial image is returned) raises :class:`ImageReadError` naming it.

    ``indices`` ([len(items)], default 0..len-1) is the index returned for each item, e.g. its position
    in a larger list that this dataset is a subset or shard of.

    ``dataset[(i, key)]`` (what the training samplers yield) seeds torch's RNG with ``key`` before the
    transform, so the augmentation of a sample depends on its key only, not on the process or loader
    worker that reads it; ``dataset[(i, key, label)]`` (:class:`TrainLoader`) also returns ``label`` as the id.
    """

    def __init__(
        self,
        items: Sequence[ImageItem | tuple[str, int, int]],
        transform: Callable | None = None,
        *,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.items = [ImageItem(str(p), int(pid), int(cam)) for p, pid, cam in items]
        self.transform = transform
        self.indices = list(range(len(self.items))) if indices is None else [int(i) for i in indices]
        if len(self.indices) != len(self.items):
            raise ValueError(f"indices has {len(self.indices)} entries for {len(self.items)} items")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int | tuple[int, int] | tuple[int, int, int]):
        label = None
        if isinstance(i, tuple):
            i, key, *label = i  # (index, key, pseudo label) from TrainLoader: the label replaces the item's id
            torch.default_generator.manual_seed(key)  # the CPU generator only: torch.manual_seed costs ~0.3 ms
        path, pid, camid = self.items[i]
        pid = label[0] if label else pid
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, camid, self.indices[i]


class _EpochSampler(torch.utils.data.Sampler):
    """The sampler a :class:`TrainLoader`'s DataLoader keeps for the whole run: it yields the entries of the
    current epoch's sampler, ``(item index, sample key, pseudo label)``. Loader workers that persist across
    epochs receive the labels with the indices, so they never need the epoch's labels themselves."""

    def __init__(self) -> None:
        self.sampler, self.keep, self.labels = None, np.zeros(0, np.int64), np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.sampler) if self.sampler is not None else 0

    def __iter__(self):
        for position, key in self.sampler:
            index = int(self.keep[position])
            yield index, key, int(self.labels[index])


class TrainLoader:
    """The training loader of a run: PK-sampled batches of the pseudo-labelled items, ``iters`` per epoch.

    Built once for the training list; :meth:`epoch` gives each epoch's loader for that epoch's pseudo labels.
    Its loader workers (``num_workers`` > 0) start at the first epoch and stay for the run
    (``persistent_workers``): the sampler runs in this process and sends each sample's item index, key and
    pseudo label, so nothing the workers hold depends on the epoch. A loader that forked its workers every
    epoch would copy this process's page tables each time (GBs of image cache at real sizes).

    Args:
        items: [N] the full training list.
        transform: the training transform; batch_size: the global batch size (each rank's batches hold
            batch_size // world_size images); num_instances: K images per identity; iters: batches per epoch;
        sampler: one of :data:`~mqreid.data.sampler.SAMPLERS`; seed: the run's seed.

    When ``cache`` holds every item (and ``transform`` is one of :mod:`~mqreid.data.transforms`'), images
    come from memory as whole batches (:class:`CachedBatches`): the same tensors as from the files, with
    conversion, normalisation and erasing on ``device`` (:class:`DeviceBatches`).
    """

    def __init__(self, items: Sequence[ImageItem | tuple[str, int, int]], *, transform: Callable, batch_size: int,
                 num_instances: int, iters: int, sampler: str = "random_multiple_gallery", num_workers: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 cache: ImageCache | None = None, device: torch.device | str = "cpu") -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"train.sampler={sampler}: expected one of {', '.join(SAMPLERS)}")
        self.items = [ImageItem(str(p), int(pid), int(cam)) for p, pid, cam in items]
        self.batch_size, self.num_instances, self.iters, self.sampler_name = batch_size, num_instances, iters, sampler
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, torch.device(device)
        self.entries = _EpochSampler()
        self.stages = cache.holds(self.items, transform) if cache is not None else None
        persistent = num_workers > 0
        if self.stages is not None:
            self.loader = DataLoader(CachedBatches(cache, self.items, self.stages, range(len(self.items)),
                                                   finish=False),
                                     batch_size=None,
                                     sampler=BatchSampler(self.entries, batch_size // world_size, drop_last=True),
                                     num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent)
        else:
            self.loader = DataLoader(ImageDataset(self.items, transform), batch_size=batch_size // world_size,
                                     sampler=self.entries, drop_last=True, num_workers=num_workers,
                                     pin_memory=pin_memory, persistent_workers=persistent)

    def epoch(self, labels: Sequence[int] | np.ndarray | torch.Tensor, epoch: int = 0) -> DeviceBatches:
        """The loader of ``epoch`` for ``labels`` [N] (pseudo label of each item, -1 = outlier, left out).

        Batches are ``(images [B/W, 3, H, W], pseudo labels [B/W], camids [B/W], indices into items [B/W])``;
        its ``max_per_cluster`` is the sampler's bound on one label's images in a global batch of the epoch.
        The random stream is that of (seed, ``epoch``), and each sample's augmentation is seeded from (seed,
        epoch, its position in the global stream), so batches and augmentations do not depend on the world
        size or ``num_workers``."""
        labels_arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels,
                                dtype=np.int64).reshape(-1)
        if len(labels_arr) != len(self.items):
            raise ValueError(f"labels has {len(labels_arr)} entries for {len(self.items)} items")
        keep = np.flatnonzero(labels_arr >= 0)
        if len(keep) == 0:
            raise ValueError("every item is an outlier (label -1): nothing to train on")
        index_sampler = SAMPLERS[self.sampler_name](
            labels_arr[keep], [self.items[i].camid for i in keep], self.batch_size, self.num_instances, self.iters,
            seed=self.seed, rank=self.rank, world_size=self.world_size,
        )
        index_sampler.set_epoch(epoch)
        self.entries.sampler, self.entries.keep, self.entries.labels = index_sampler, keep, labels_arr
        return DeviceBatches(self.loader, self.device, self.stages, index_sampler.max_per_cluster())


def build_train_loader(
    items: Sequence[ImageItem | tuple[str, int, int]],
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    epoch: int = 0,
    **kwargs,
) -> DeviceBatches:
    """The loader of one epoch: ``TrainLoader(items, **kwargs).epoch(labels, epoch)`` (a run keeps one
    :class:`TrainLoader` for all its epochs)."""
    return TrainLoader(items, **kwargs).epoch(labels, epoch)


def build_test_loader(
    items: Sequence[ImageItem | tuple[str, int, int]],
    *,
    transform: Callable,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    cache: ImageCache | None = None,
    device: torch.device | str = "cpu",
    pin_memory: bool = False,
) -> DeviceBatches:
    """Sequential loader; with ``world_size`` > 1 rank r reads the contiguous block r of ``items``.

    Blocks are ``items[r * N // W : (r + 1) * N // W]``, so concatenating the ranks' outputs in rank order
    restores the order of ``items``; the index field is the global index into ``items`` either way.
    When ``cache`` holds the block, a batch is one gather (in ``num_workers`` loader workers, which share the
    cache's memory, or in this process with 0), copied as uint8 and normalised on ``device``
    (:class:`DeviceBatches`); on a GPU the workers keep the gathers and pinned copies of 94k MSMT17 images
    off the process that drives the device.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world size {world_size}), got {rank}")
    n = len(items)
    start, stop = rank * n // world_size, (rank + 1) * n // world_size
    block = items[start:stop]
    stages = cache.holds(block, transform) if cache is not None else None
    if stages is not None:
        batches = BatchSampler(SequentialSampler(block), batch_size, drop_last=False)
        return DeviceBatches(DataLoader(CachedBatches(cache, block, stages, range(start, stop), finish=False),
                                        batch_size=None, sampler=batches, num_workers=num_workers,
                                        pin_memory=pin_memory), device, stages)
    dataset = ImageDataset(block, transform, indices=range(start, stop))
    return DeviceBatches(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                    pin_memory=pin_memory), device)
