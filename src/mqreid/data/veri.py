"""VeRi-776 (vehicle re-identification).

Liu et al., "A Deep Learning-Based Approach to Progressive Vehicle Re-identification for Urban
Surveillance", ECCV 2016; Liu et al., "Large-scale vehicle re-identification in urban surveillance
videos", ICME 2016.
URL: https://vehiclereid.github.io/VeRi/

Expected layout: ``<root>/veri/VeRi/{image_train,image_query,image_test}/``.

Statistics (ids / images / cameras):
    train    575 / 37,778 / 20
    query    200 /  1,678 / 19
    gallery  200 / 11,579 / 19

File names: ``0001_c001_00016450_0.jpg`` = vehicle 0001, camera 001 (1-based), frame 00016450.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import ReIDDataset, parse_folder, relabel
from .market1501 import require_nonempty

PATTERN = re.compile(r"([-\d]+)_c(\d+)")

SPLIT_FOLDERS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}


class VeRi(ReIDDataset):
    """VeRi-776 under ``root/veri/VeRi``; cameras c001..c020 become 0..19."""

    name = "veri"
    dataset_dir = Path("veri") / "VeRi"

    def __init__(self, root: str | Path, verbose: bool = True) -> None:
        data_dir = Path(root).expanduser() / self.dataset_dir
        hint = f"{data_dir}/ holding image_train/, image_query/, image_test/ with names like 0001_c001_00016450_0.jpg"
        splits = {}
        for split, folder_name in SPLIT_FOLDERS.items():
            folder = data_dir / folder_name
            # Junk rule: pid -1 (junk) is dropped everywhere; the release has no distractors.
            items = parse_folder(folder, PATTERN, layout_hint=hint, camid_base=1, skip_pids=(-1,))
            splits[split] = require_nonempty(items, folder, hint)
        super().__init__(relabel(splits["train"]), splits["query"], splits["gallery"], root=data_dir, verbose=verbose)
