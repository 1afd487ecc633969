"""Folders of images named ``<pid>_c<camera>...``: one regex-driven parser for every such release.

A dataset passes its regex (groups: pid, camera number), its folder names and its junk, distractor and
camera rules; the parser walks the folders and names the folder or file that does not fit the layout.
:class:`MarketLayoutDataset` turns those rules, written as class attributes, into a dataset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .base import DatasetError, ImageItem, ReIDDataset, relabel

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def layout_hint(data_dir: Path, example: str, folders: dict[str, str] = MARKET_FOLDERS) -> str:
    """The expected layout under ``data_dir``, for error messages."""
    return f"{data_dir}/ holding {', '.join(f + '/' for f in folders.values())} with names like {example}"


def require_dir(path: Path, layout_hint: str) -> Path:
    """Return ``path`` if it is a directory, else raise a :class:`DatasetError` naming it."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"missing folder {path}; expected layout: {layout_hint}")
    return path


def require_nonempty(items: list[ImageItem], where: Path, layout_hint: str) -> list[ImageItem]:
    """Return ``items`` unless empty, in which case raise naming ``where`` and the layout."""
    if not items:
        raise DatasetError(f"no usable images in {where}; expected layout: {layout_hint}")
    return items


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
    unlabelled: bool = False,
) -> list[ImageItem]:
    """Parse every image of ``folder`` whose file name ``pattern`` matches with groups (pid, camera).

    ``camid_base`` is subtracted from the parsed camera number to make it 0-based; images whose pid is in
    ``skip_pids`` (junk, distractors) are dropped. A name that does not match raises, naming the file,
    unless ``unlabelled``: then it is kept as unknown (pid -1, camera 0), and so is a negative pid.
    """
    folder = require_dir(folder, layout_hint)
    skip = set(skip_pids)
    items = []
    for path in list_images(folder):
        m = pattern.search(path.name)
        if m is None:
            if not unlabelled:
                raise DatasetError(
                    f"cannot parse file name {path}: expected it to match {pattern.pattern!r} ({layout_hint})"
                )
            items.append(ImageItem(str(path.resolve()), -1, 0))
            continue
        pid, cam = int(m.group(1)), int(m.group(2)) - camid_base
        if unlabelled and pid < 0:
            pid = -1
        elif pid in skip:
            continue
        items.append(ImageItem(str(path.resolve()), pid, cam))
    return items


def parse_market_layout(
    data_dir: Path,
    pattern: re.Pattern[str],
    *,
    example: str,
    folders: dict[str, str] = MARKET_FOLDERS,
    camid_base: int = 1,
    sorted_cameras: bool = False,
    distractor_pid: int | None = 0,
    unlabelled_train: bool = False,
) -> tuple[list[ImageItem], list[ImageItem], list[ImageItem]]:
    """Parse the train, query and gallery folders (``folders``) of a release into (train, query, gallery).

    ``pattern`` captures (pid, camera). Cameras become 0-based by subtracting ``camid_base``, or with
    ``sorted_cameras`` by mapping the camera numbers found in all three folders, sorted, to 0..C-1. Junk
    (pid -1) is dropped everywhere; distractors (``distractor_pid``; None when the release has none) are
    dropped from train. With ``unlabelled_train`` a training name that does not match, or a negative
    training pid, is kept as unknown (pid -1). The training pids are relabelled to 0..P-1.
    """
    data_dir = Path(data_dir)
    hint = layout_hint(data_dir, example, folders)
    require_dir(data_dir, hint)
    train_skip = (-1,) if distractor_pid is None else (-1, distractor_pid)
    splits = []
    for split, skip in (("train", train_skip), ("query", (-1,)), ("gallery", (-1,))):
        folder = data_dir / folders[split]
        items = parse_folder(folder, pattern, layout_hint=hint, camid_base=camid_base, skip_pids=skip,
                             unlabelled=unlabelled_train and split == "train")
        splits.append(require_nonempty(items, folder, hint))
    if sorted_cameras:
        index = {cam: i for i, cam in enumerate(sorted({it.camid for items in splits for it in items}))}
        splits = [[it._replace(camid=index[it.camid]) for it in items] for items in splits]
    train, query, gallery = splits
    return relabel(train), query, gallery


class MarketLayoutDataset(ReIDDataset):
    """A release of three image folders with ``<pid>_c<camera>...`` names under ``root/dataset_dir``.

    Subclasses state the release's rules as class attributes (see :func:`parse_market_layout`):
    ``name``, ``dataset_dir``, ``pattern``, ``example`` (a file name, for error messages) and, where they
    differ from Market-1501's, ``folders``, ``sorted_cameras`` and ``distractor_pid``. A missing folder,
    an empty one or a file name that does not fit raises a :class:`DatasetError` naming it.
    """

    dataset_dir: Path
    pattern: re.Pattern[str]
    example: str
    folders: dict[str, str] = MARKET_FOLDERS
    sorted_cameras: bool = False
    distractor_pid: int | None = 0

    def __init__(self, root: str | Path, verbose: bool = True, on_bad_image: str = "error") -> None:
        data_dir = Path(root).expanduser() / self.dataset_dir
        train, query, gallery = parse_market_layout(
            data_dir, self.pattern, example=self.example, folders=self.folders, sorted_cameras=self.sorted_cameras,
            distractor_pid=self.distractor_pid,
        )
        super().__init__(train, query, gallery, root=data_dir, verbose=verbose, on_bad_image=on_bad_image)
