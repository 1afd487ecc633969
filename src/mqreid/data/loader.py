"""Image dataset and the train (PK-sampled, pseudo-labelled) and test (sequential, sharded) loaders."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .base import DatasetError, ImageItem
from .image_check import READ_ERRORS
from .sampler import SAMPLERS

# appended to every read error: what the check at load time covers, and why a run cannot drop the file
READ_ADVICE = (
    "The check made when the dataset was built reads each file's header (and a JPEG's last bytes) only, so "
    "damage inside the image data, or a file changed since, shows up here. A file that fails during a run is not "
    "left out, even with dataset.on_bad_image=skip: dropping it mid-epoch would change the run. Replace or "
    "delete the file and start the run again."
)


class ImageReadError(DatasetError, OSError):
    """An image file could not be read or decoded."""


class ImageDataset(Dataset):
    """Items (path, pid, camid) -> ``(image, pid, camid, index)``; the image is read with PIL as RGB.

    A file that cannot be decoded (e.g. a truncated JPEG: mqreid leaves PIL's ``LOAD_TRUNCATED_IMAGES``
    False, so no partial image is returned) raises :class:`ImageReadError` naming it.

    ``indices`` ([len(items)], default 0..len-1) is the index returned for each item, e.g. its position
    in a larger list that this dataset is a subset or shard of.

    ``dataset[(i, key)]`` (what the training samplers yield) seeds torch's RNG with ``key`` before the
    transform, so the augmentation of a sample depends on its key only, not on the process or loader
    worker that reads it.
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

    def __getitem__(self, i: int | tuple[int, int]):
        if isinstance(i, tuple):
            i, key = i
            torch.default_generator.manual_seed(key)  # the CPU generator only: torch.manual_seed costs ~0.3 ms
        path, pid, camid = self.items[i]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except READ_ERRORS as e:
            raise ImageReadError(f"cannot read image {path}: {e}. {READ_ADVICE}") from e
        if self.transform is not None:
            image = self.transform(image)
        return image, pid, camid, self.indices[i]


def build_train_loader(
    items: Sequence[ImageItem | tuple[str, int, int]],
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    transform: Callable,
    batch_size: int,
    num_instances: int,
    iters: int,
    sampler: str = "random_multiple_gallery",
    num_workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """PK-sampled loader over the pseudo-labelled items, yielding exactly ``iters`` batches per epoch.

    Args:
        items: [N] the full training list.
        labels: [N] pseudo label of each item (-1 = outlier, left out).
        batch_size: global batch size; each rank's batches hold batch_size // world_size images.

    Batches are ``(images [B/W, 3, H, W], pseudo labels [B/W], camids [B/W], indices into items [B/W])``.
    ``sampler`` names one of :data:`~mqreid.data.sampler.SAMPLERS`; the random stream is that of
    (``seed``, ``epoch``). Each sample's augmentation is seeded from (seed, epoch, its
    position in the global stream), so batches and augmentations do not depend on ``world_size`` or
    ``num_workers``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"train.sampler={sampler!r} is unknown; valid choices: {', '.join(SAMPLERS)}")
    labels_arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    if len(labels_arr) != len(items):
        raise ValueError(f"labels has {len(labels_arr)} entries for {len(items)} items")
    keep = np.flatnonzero(labels_arr >= 0)
    if len(keep) == 0:
        raise ValueError("every item is an outlier (label -1): nothing to train on")
    kept = [ImageItem(str(items[i][0]), int(labels_arr[i]), int(items[i][2])) for i in keep]
    dataset = ImageDataset(kept, transform, indices=keep.tolist())
    index_sampler = SAMPLERS[sampler](
        [it.pid for it in kept], [it.camid for it in kept], batch_size, num_instances, iters,
        seed=seed, rank=rank, world_size=world_size,
    )
    index_sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=index_sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def build_test_loader(
    items: Sequence[ImageItem | tuple[str, int, int]],
    *,
    transform: Callable,
    batch_size: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Sequential loader; with ``world_size`` > 1 rank r reads the contiguous block r of ``items``.

    Blocks are ``items[r * N // W : (r + 1) * N // W]``, so concatenating the ranks' outputs in rank order
    restores the order of ``items``; the index field is the global index into ``items`` either way.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world size {world_size}), got {rank}")
    n = len(items)
    start, stop = rank * n // world_size, (rank + 1) * n // world_size
    dataset = ImageDataset(items[start:stop], transform, indices=range(start, stop))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
