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

from .layout import MarketLayoutDataset


class PersonX(MarketLayoutDataset):
    """PersonX under ``root/personx/PersonX``; camera numbers mapped in sorted order to 0..C-1."""

    name = "personx"
    dataset_dir = Path("personx") / "PersonX"
    pattern = re.compile(r"([-\d]+)_c(\d+)")
    example = "0001_c3s1_0018.jpg"
    sorted_cameras = True
    # Junk rule: pid -1 dropped everywhere, pid 0 kept in the gallery only (Market protocol).
    distractor_pid = 0
