"""Common pieces of every re-ID dataset: the item type, folder parsing and the statistics table."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


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


def require_dir(path: Path, layout_hint: str) -> Path:
    """Return ``path`` if it is a directory, else raise a :class:`DatasetError` naming it."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"missing folder {path}; expected layout: {layout_hint}")
    return path


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted; other files and sub-folders are ignored)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def parse_folder(
    folder: Path,
    pattern: re.Pattern[str],
    *,
    layout_hint: str,
    camid_base: int = 1,
    skip_pids: Iterable[int] = (-1,),
) -> list[ImageItem]:
    """Parse every image of ``folder`` whose file name ``pattern`` matches with groups (pid, camid).

    ``camid_base`` is subtracted from the parsed camera number to make it 0-based; images whose pid is in
    ``skip_pids`` (junk) are dropped. A name that does not match raises, naming the file.
    """
    folder = require_dir(folder, layout_hint)
    skip = set(skip_pids)
    items = []
    for path in list_images(folder):
        m = pattern.search(path.name)
        if m is None:
            raise DatasetError(
                f"cannot parse file name {path}: expected it to match {pattern.pattern!r} ({layout_hint})"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid in skip:
            continue
        items.append(ImageItem(str(path.resolve()), pid, cam - camid_base))
    return items


def relabel(items: Sequence[ImageItem]) -> list[ImageItem]:
    """Map the pids of ``items`` to 0..P-1 in sorted pid order (unknown pids, -1, stay -1)."""
    pids = sorted({it.pid for it in items if it.pid >= 0})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [ImageItem(it.path, mapping.get(it.pid, -1), it.camid) for it in items]


def _split_stats(items: Sequence[ImageItem]) -> tuple[int, int, int]:
    return len({it.pid for it in items}), len(items), len({it.camid for it in items})


class ReIDDataset:
    """Train / query / gallery lists of :class:`ImageItem`, validated on construction."""

    name = "dataset"

    def __init__(
        self,
        train: list[ImageItem],
        query: list[ImageItem],
        gallery: list[ImageItem],
        *,
        root: str | Path = "",
        verbose: bool = True,
    ) -> None:
        self.root = str(root)
        for split, items in (("train", train), ("query", query), ("gallery", gallery)):
            if not items:
                raise DatasetError(f"{self.name}: the {split} split under {self.root} is empty")
        self.train, self.query, self.gallery = list(train), list(query), list(gallery)
        if verbose:
            log.info("%s loaded from %s\n%s", self.name, self.root, self.stats_table())

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
