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

from .layout import MarketLayoutDataset


class Market1501(MarketLayoutDataset):
    """Market-1501 under ``root/market1501/Market-1501-v15.09.15``; cameras 1..6 become 0..5."""

    name = "market1501"
    dataset_dir = Path("market1501") / "Market-1501-v15.09.15"
    pattern = re.compile(r"([-\d]+)_c(\d)")
    example = "0002_c1s1_000451_03.jpg"
    # Junk rule: pid -1 = junk boxes, dropped everywhere; pid 0 = distractors, gallery only.
    distractor_pid = 0
