"""PersonX (synthetic persons rendered in a game engine).

Sun and Zheng, "Dissecting Person Re-identification from the Viewpoint of Viewpoint", CVPR 2019.
URL: https://github.com/sxzrt/Instructions-of-the-PersonX-dataset

Expected layout: ``<root>/personx/PersonX/{bounding_box_train,query,bounding_box_test}/``.

Statistics (ids / images / cameras):
    train    410 /  9,840 / 6
    query    856 /  5,136 / 6
    gallery  856 / 30,816 / 6

File names: ``0001_c3s1_0018.jpg`` = pid 0001, camera 3. The camera numbers are not always 1..6: some
releases number the six cameras 3, 4, 8, 10, 11, 12. Whatever set of numbers appears (over all three
splits) is sorted and mapped to 0..C-1, so both releases give cameras 0..5.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import ImageItem, ReIDDataset
from .market1501 import parse_market_layout

PATTERN = re.compile(r"([-\d]+)_c(\d+)")


class PersonX(ReIDDataset):
    """PersonX under ``root/personx/PersonX``; camera numbers mapped in sorted order to 0..C-1."""

    name = "personx"
    dataset_dir = Path("personx") / "PersonX"

    def __init__(self, root: str | Path, verbose: bool = True) -> None:
        data_dir = Path(root).expanduser() / self.dataset_dir
        # Junk rule: pid -1 dropped everywhere, pid 0 kept in the gallery only (Market protocol).
        splits = parse_market_layout(data_dir, PATTERN, example="0001_c3s1_0018.jpg", camid_base=0)
        cameras = sorted({it.camid for items in splits for it in items})
        cam_index = {cam: i for i, cam in enumerate(cameras)}
        train, query, gallery = (
            [ImageItem(it.path, it.pid, cam_index[it.camid]) for it in items] for items in splits
        )
        super().__init__(train, query, gallery, root=data_dir, verbose=verbose)
