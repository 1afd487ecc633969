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

from .layout import MarketLayoutDataset


class VeRi(MarketLayoutDataset):
    """VeRi-776 under ``root/veri/VeRi``; cameras c001..c020 become 0..19."""

    name = "veri"
    dataset_dir = Path("veri") / "VeRi"
    pattern = re.compile(r"([-\d]+)_c(\d+)")
    example = "0001_c001_00016450_0.jpg"
    folders = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
    # Junk rule: pid -1 (junk) is dropped everywhere; the release has no distractors.
    distractor_pid = None
