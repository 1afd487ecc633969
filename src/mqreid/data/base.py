"""Common pieces of every re-ID dataset: the item type, relabelling, the image check and the statistics table.

Parsing of file names and folders is in :mod:`mqreid.data.layout`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .image_check import PROGRESS_ABOVE, check_policy, find_unreadable, list_files

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset folder, list file or file name does not match the expected layout."""


class ImageItem(NamedTuple):
    """One image: absolute path, person/vehicle id (-1 = unknown) and 0-based camera id."""

    path: str
    pid: int
    camid: int


def id_arrays(items: Sequence[ImageItem]) -> tuple[np.ndarray, np.ndarray]:
    """``(pids [N], camids [N])`` of ``items`` as int64 arrays."""
    return (np.fromiter((it.pid for it in items), np.int64, len(items)),
            np.fromiter((it.camid for it in items), np.int64, len(items)))


def relabel(items: Sequence[ImageItem]) -> list[ImageItem]:
    """Map the pids of ``items`` to 0..P-1 in sorted pid order (unknown pids, -1, stay -1)."""
    pids = sorted({it.pid for it in items if it.pid >= 0})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [ImageItem(it.path, mapping.get(it.pid, -1), it.camid) for it in items]


def _split_stats(items: Sequence[ImageItem]) -> tuple[int, int, int]:
    return len({it.pid for it in items}), len(items), len({it.camid for it in items})


def screen_images(
    splits: dict[str, list[ImageItem]], *, name: str, on_bad_image: str = "error", progress: bool = True
) -> dict[str, list[ImageItem]]:
    """Check every image of ``splits`` (split name -> items, see :mod:`mqreid.data.image_check`).

    Returns the splits without unreadable files. ``on_bad_image="error"`` raises one
    :class:`DatasetError` listing every unreadable file instead; ``"skip"`` logs a warning with their
    count and names. ``progress`` allows a progress bar, shown above ``PROGRESS_ABOVE`` images.
    """
    check_policy(on_bad_image)
    paths = list(dict.fromkeys(it.path for items in splits.values() for it in items))
    problems = find_unreadable(paths, progress=progress and len(paths) > PROGRESS_ABOVE)
    if not problems:
        return splits
    counts = ", ".join(f"{split} {sum(it.path in problems for it in items)}" for split, items in splits.items())
    if on_bad_image == "error":
        raise DatasetError(
            f"{name}: {len(problems)} of {len(paths)} image files cannot be read ({counts}):\n"
            f"{list_files(problems)}\n"
            "Replace or delete these files, or set dataset.on_bad_image=skip (on_bad_image='skip' in Python) "
            "to leave them out of the dataset."
        )
    log.warning("%s: leaving out %d of %d image files that cannot be read (%s; dataset.on_bad_image=skip):\n%s",
                name, len(problems), len(paths), counts, list_files(problems))
    return {split: [it for it in items if it.path not in problems] for split, items in splits.items()}


class ReIDDataset:
    """Train / query / gallery lists of :class:`ImageItem`, validated on construction.

    Every image file is checked when the dataset is built (:func:`screen_images`): with
    ``on_bad_image="error"`` (default) unreadable files raise one :class:`DatasetError` naming them,
    with ``"skip"`` they are left out (the training pids are then relabelled to stay 0..P-1).
    Subclasses add their own checks of the final lists in :meth:`validate`.
    """

    name = "dataset"

    def __init__(
        self,
        train: list[ImageItem],
        query: list[ImageItem],
        gallery: list[ImageItem],
        *,
        root: str | Path = "",
        verbose: bool = True,
        on_bad_image: str = "error",
    ) -> None:
        self.root = str(root)
        splits = {"train": list(train), "query": list(query), "gallery": list(gallery)}
        kept = screen_images(splits, name=self.name, on_bad_image=on_bad_image, progress=verbose)
        for split, items in kept.items():
            if not items:
                dropped = len(splits[split])
                after = f" after leaving out its {dropped} unreadable image files" if dropped else ""
                raise DatasetError(f"{self.name}: the {split} split under {self.root} is empty{after}")
        if len(kept["train"]) < len(splits["train"]):
            kept["train"] = relabel(kept["train"])
        self.train, self.query, self.gallery = kept["train"], kept["query"], kept["gallery"]
        self.validate()
        if verbose:
            log.info("%s loaded from %s\n%s", self.name, self.root, self.stats_table())

    def validate(self) -> None:
        """Checks of the final train / query / gallery lists; raise :class:`DatasetError` on failure."""

    @property
    def num_train_pids(self) -> int:
        return len({it.pid for it in self.train if it.pid >= 0})

    @property
    def train_labels_known(self) -> bool:
        """True when every training image carries its true id (used for pseudo-label quality metrics)."""
        return all(it.pid >= 0 for it in self.train)

    def stats_table(self) -> str:
        rows = [("train", *_split_stats(self.train)), ("query", *_split_stats(self.query)),
                ("gallery", *_split_stats(self.gallery))]
        lines = ["  subset   | # ids | # images | # cameras", "  ---------|-------|----------|----------"]
        lines += [f"  {n:<8} | {a:5d} | {b:8d} | {c:9d}" for n, a, b, c in rows]
        return "\n".join(lines)
