"""Market-1501.

Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015.
URL: https://zheng-lab-anu.github.io/Project/project_reid.html

Expected layout: ``<root>/market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/``.

Statistics (ids / images / cameras):
    train    751 / 12,936 / 6
    query    750 /  3,368 / 6
    gallery  751 / 15,913 / 6   (+ 2,793 distractors with pid 0; 3,819 junk images with pid -1 removed)

File names: ``0002_c1s1_000451_03.jpg`` = pid 0002, camera 1, sequence 1, frame 000451, box 03.
Other folders of the release (``gt_bbox/``, ``gt_query/``, ``bounding_box_train_*``) and non-image
files (``Thumbs.db``) are not part of the protocol and are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DatasetError, ImageItem, ReIDDataset, parse_folder, relabel

PATTERN = re.compile(r"([-\d]+)_c(\d)")

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def market_layout_hint(data_dir: Path, example: str) -> str:
    """The expected Market-style layout under ``data_dir``, for error messages."""
    return f"{data_dir}/ holding bounding_box_train/, query/, bounding_box_test/ with names like {example}"


def require_nonempty(items: list[ImageItem], folder: Path, layout_hint: str) -> list[ImageItem]:
    """Return ``items`` unless empty, in which case raise naming ``folder`` and the layout."""
    if not items:
        raise DatasetError(f"no usable images in {folder}; expected layout: {layout_hint}")
    return items


def parse_market_layout(
    data_dir: Path,
    pattern: re.Pattern[str],
    *,
    example: str,
    camid_base: int = 1,
    distractor_pid: int | None = 0,
) -> tuple[list[ImageItem], list[ImageItem], list[ImageItem]]:
    """Parse the three folders of a Market-style release into (train, query, gallery).

    ``pattern`` captures (pid, camera); ``camid_base`` is subtracted from the camera number. Junk (pid -1)
    is dropped everywhere, distractors (``distractor_pid``; None when the release has none) are dropped
    from train, and the training pids are relabelled to 0..P-1.
    """
    data_dir = Path(data_dir)
    hint = market_layout_hint(data_dir, example)
    if not data_dir.is_dir():
        raise DatasetError(f"missing folder {data_dir}; expected layout: {hint}")
    splits = []
    train_skip = (-1,) if distractor_pid is None else (-1, distractor_pid)
    for split, skip in (("train", train_skip), ("query", (-1,)), ("gallery", (-1,))):
        folder = data_dir / SPLIT_FOLDERS[split]
        items = parse_folder(folder, pattern, layout_hint=hint, camid_base=camid_base, skip_pids=skip)
        splits.append(require_nonempty(items, folder, hint))
    train, query, gallery = splits
    return relabel(train), query, gallery


class Market1501(ReIDDataset):
    """Market-1501 under ``root/market1501/Market-1501-v15.09.15``; cameras 1..6 become 0..5."""

    name = "market1501"
    dataset_dir = Path("market1501") / "Market-1501-v15.09.15"

    def __init__(self, root: str | Path, verbose: bool = True) -> None:
        data_dir = Path(root).expanduser() / self.dataset_dir
        # Junk rule: pid -1 = junk boxes, dropped everywhere; pid 0 = distractors, gallery only.
        train, query, gallery = parse_market_layout(data_dir, PATTERN, example="0002_c1s1_000451_03.jpg")
        super().__init__(train, query, gallery, root=data_dir, verbose=verbose)
