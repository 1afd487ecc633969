"""Your own data, as a Market-style folder or as a CSV file.

Folder (``Custom(root)``): ``root/{bounding_box_train,query,bounding_box_test}/`` with names like
``0001_c1_anything.jpg`` (pid 0001, camera 1, 1-based). Training ids may be unknown: an image of
``bounding_box_train/`` whose name does not follow the pattern (or whose pid is -1) gets pid -1 and
camera 0. Query and gallery names must follow the pattern; there pid -1 is junk (dropped) and pid 0
a distractor (gallery only), as in Market-1501.

CSV (``Custom(root, csv="list.csv")``; a relative ``csv`` is resolved against ``root``): header
``path,pid,camid,split``; ``split`` is ``train``, ``query`` or ``gallery``; ``camid`` is 0-based; relative
paths are resolved against the CSV's folder; ``pid`` may be empty or -1 (unknown) in train only.
Without the ``camid`` column the data has no camera ids (``cameras_known`` is False): every image gets camera
0 except the gallery's, camera 1, so that the evaluation excludes no gallery image as "same camera"; the
settings that use camera ids (``clusterer.camera_aware``, ``camera=proxies``, ``train.camera_centering``) are
refused at start-up.

Validation: query and gallery carry known pids, and after the Market protocol's exclusion (a gallery
image of the query's own pid *and* camera is not a valid match) at least one query keeps a correct
match in the gallery; without it every query is skipped by the evaluation and mAP is nan.
"""

from __future__ import annotations

import csv as csv_module
import logging
import re
from collections import defaultdict
from pathlib import Path

from .base import DatasetError, ImageItem, ReIDDataset, relabel
from .layout import parse_market_layout, require_nonempty

log = logging.getLogger(__name__)

PATTERN = re.compile(r"^([-\d]+)_c(\d+)")  # 0001_c1_anything.jpg -> pid 0001, camera 1 (1-based)
EXAMPLE = "0001_c1_anything.jpg (unlabelled training names allowed)"

CSV_COLUMNS = ("path", "pid", "camid", "split")
REQUIRED_COLUMNS = ("path", "pid", "split")  # without camid: no camera ids
SPLITS = ("train", "query", "gallery")


def count_matchable_queries(query: list[ImageItem], gallery: list[ImageItem]) -> int:
    """Number of queries with at least one gallery image of the same pid from another camera."""
    cams_of_pid: dict[int, set[int]] = defaultdict(set)
    for it in gallery:
        cams_of_pid[it.pid].add(it.camid)
    return sum(bool(cams_of_pid.get(q.pid, set()) - {q.camid}) for q in query)


def parse_csv(csv_file: Path) -> dict[str, list[ImageItem]]:
    """Read ``path,pid,camid,split`` rows into one item list per split (without ``camid``: see the module
    docstring)."""
    if not csv_file.is_file():
        raise DatasetError(f"missing CSV file {csv_file}; expected header {','.join(CSV_COLUMNS)}")
    splits: dict[str, list[ImageItem]] = {s: [] for s in SPLITS}
    with csv_file.open(newline="", encoding="utf-8-sig") as f:  # a byte-order mark (Excel's "CSV UTF-8") is skipped
        reader = csv_module.DictReader(f)
        if reader.fieldnames is None or set(REQUIRED_COLUMNS) - set(reader.fieldnames):
            raise DatasetError(f"{csv_file}: header is {reader.fieldnames}, expected columns {','.join(CSV_COLUMNS)} "
                               f"(camid may be left out when the cameras are unknown)")
        with_cameras = "camid" in reader.fieldnames
        for row in reader:
            where = f"{csv_file}, line {reader.line_num}"
            split = (row["split"] or "").strip()
            if split not in SPLITS:
                raise DatasetError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
            pid_text = (row["pid"] or "").strip()
            try:
                pid = int(pid_text) if pid_text else -1
                camid = int((row["camid"] or "").strip()) if with_cameras else int(split == "gallery")
            except ValueError:
                msg = f"{where}: pid {row['pid']!r} / camid {row.get('camid')!r} are not integers"
                raise DatasetError(msg) from None
            if pid < -1 or camid < 0:
                raise DatasetError(f"{where}: expected pid >= -1 and a 0-based camid >= 0, got {pid}, {camid}")
            if pid < 0 and split != "train":
                raise DatasetError(
                    f"{where}: {split} images need a known pid (>= 0); only train pids may be empty or -1"
                )
            path = Path((row["path"] or "").strip()).expanduser()
            path = path if path.is_absolute() else csv_file.parent / path
            if not path.is_file():
                raise DatasetError(f"{where}: image {path} does not exist")
            splits[split].append(ImageItem(str(path.resolve()), pid, camid))
    for split, items in splits.items():
        require_nonempty(items, csv_file, f"at least one row with split={split}")
    return splits


def has_camid_column(csv_file: Path) -> bool:
    """Whether the CSV's header has the ``camid`` column."""
    with csv_file.open(newline="", encoding="utf-8-sig") as f:
        return "camid" in (csv_module.DictReader(f).fieldnames or [])


class Custom(ReIDDataset):
    """A user dataset from a Market-style folder at ``root`` or from ``csv`` (see the module docstring)."""

    name = "custom"
    cameras_known = True  # False for a CSV without the camid column

    def __init__(self, root: str | Path, csv: str | Path | None = None, verbose: bool = True,
                 on_bad_image: str = "error") -> None:
        root = Path(root).expanduser()
        if csv is not None:
            csv_file = Path(csv).expanduser()
            csv_file = csv_file if csv_file.is_absolute() else root / csv_file
            splits = parse_csv(csv_file)
            self.cameras_known = has_camid_column(csv_file)
            train, query, gallery, source = relabel(splits["train"]), splits["query"], splits["gallery"], csv_file
        else:
            # Junk rule: pid -1 is junk in query and gallery (dropped), pid 0 a distractor there; in train
            # every pid >= 0 is an id, and a name that does not follow the pattern, or pid -1, an unknown id.
            train, query, gallery = parse_market_layout(root, PATTERN, example=EXAMPLE, distractor_pid=None,
                                                        unlabelled_train=True)
            unlabelled = sum(it.pid < 0 for it in train)
            if unlabelled and verbose:
                log.info("%s: %d of %d training images carry no id (name not like <pid>_c<camera>_*.jpg, or pid "
                         "-1); pseudo-label quality (ARI, NMI) is measured only when every training image has one",
                         root, unlabelled, len(train))
            source = root
        super().__init__(train, query, gallery, root=source, verbose=verbose, on_bad_image=on_bad_image)

    def validate(self) -> None:
        """At least one query has a valid gallery match; queries without one are counted in a warning."""
        matchable = count_matchable_queries(self.query, self.gallery)
        if matchable == 0:
            raise DatasetError(
                f"{self.root}: no query has a valid match in the gallery. A match needs the query's pid in the "
                "gallery from a different camera (same-pid, same-camera gallery images are excluded by the "
                "Market protocol), so every query would be skipped and mAP would be nan. Check the pids, "
                "give queries and gallery images of the same pid different camids, or add such gallery images."
            )
        if matchable < len(self.query):
            log.warning("%s: %d of %d queries have no valid gallery match and will be skipped by the evaluation",
                        self.root, len(self.query) - matchable, len(self.query))
