"""MSMT17.

Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification", CVPR 2018.
URL: https://www.pkuvmc.com/dataset.html

Two layouts under ``<root>/msmt17/MSMT17_V1/`` are recognised:
(a) the official release: ``train/``, ``test/`` and the lists ``list_train.txt``, ``list_val.txt``,
    ``list_query.txt``, ``list_gallery.txt``; each line is ``0000/0000_000_01_0303morning_0015_0.jpg 0``
    (path under ``train/`` or ``test/``, then pid). The training set is train + val (val images are
    training identities held out in the release), relabelled to 0..P-1.
(b) the Market-style conversion: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names
    like ``0000_c1_0000.jpg``.
The official lists are used when ``list_train.txt`` exists.

Statistics (ids / images / cameras):
    train   1,041 / 32,621 / 15   (30,248 in list_train + 2,373 in list_val)
    query   3,060 / 11,659 / 15
    gallery 3,060 / 82,161 / 15

File names (official): ``0000_000_01_0303morning_0015_0.jpg``; the third field (``01``) is the 1-based
camera. The release has no junk or distractor images.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DatasetError, ImageItem, ReIDDataset, relabel
from .layout import parse_market_layout, require_nonempty

PATTERN = re.compile(r"^\d+_\d+_(\d+)_")  # official name -> camera (third field)
MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d+)")  # converted layout -> (pid, camera)

LIST_LINE = re.compile(r"^(\S+)\s+(-?\d+)$")


def parse_list(list_file: Path, image_dir: Path) -> list[ImageItem]:
    """Parse one official list file: ``<relative path> <pid>`` per line, camera from the file name."""
    if not list_file.is_file():
        raise DatasetError(
            f"missing list file {list_file}; expected lines like '0000/0000_000_01_0303morning_0015_0.jpg 0'"
        )
    items = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        m = LIST_LINE.match(line.strip())
        cam = PATTERN.match(Path(m.group(1)).name) if m else None
        if cam is None:
            raise DatasetError(
                f"{list_file}, line {lineno}: cannot parse {line!r}; expected "
                "'<pid folder>/<pid>_<idx>_<camera>_<time>_<frame>_<n>.jpg <pid>'"
            )
        path = image_dir / m.group(1)
        if not path.is_file():
            raise DatasetError(f"{list_file}, line {lineno}: listed image {path} does not exist")
        items.append(ImageItem(str(path.resolve()), int(m.group(2)), int(cam.group(1)) - 1))
    return require_nonempty(items, list_file, "non-empty official MSMT17 list")


class MSMT17(ReIDDataset):
    """MSMT17 under ``root/msmt17/MSMT17_V1`` (official lists or Market-style folders); cameras 1..15 -> 0..14."""

    name = "msmt17"
    dataset_dir = Path("msmt17") / "MSMT17_V1"

    def __init__(self, root: str | Path, verbose: bool = True, on_bad_image: str = "error") -> None:
        data_dir = Path(root).expanduser() / self.dataset_dir
        if (data_dir / "list_train.txt").is_file():
            train = parse_list(data_dir / "list_train.txt", data_dir / "train")
            train += parse_list(data_dir / "list_val.txt", data_dir / "train")
            query = parse_list(data_dir / "list_query.txt", data_dir / "test")
            gallery = parse_list(data_dir / "list_gallery.txt", data_dir / "test")
            train = relabel(train)
        elif (data_dir / "bounding_box_train").is_dir():
            # Junk rule: none in the release; pid -1 is dropped and pid 0 is a person here, not a distractor.
            train, query, gallery = parse_market_layout(
                data_dir, MARKET_PATTERN, example="0000_c1_0000.jpg", distractor_pid=None
            )
        else:
            raise DatasetError(
                f"no MSMT17 found in {data_dir}: expected either train/, test/ and "
                "list_{train,val,query,gallery}.txt (official release) or bounding_box_train/, query/, "
                "bounding_box_test/ (Market-style conversion)"
            )
        super().__init__(train, query, gallery, root=data_dir, verbose=verbose, on_bad_image=on_bad_image)
