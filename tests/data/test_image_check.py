"""Unreadable image files: listed at once when a dataset is built, left out on request, named when read."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from mqreid.data import DatasetError, ImageDataset, ImageReadError, build_dataset, build_test_loader
from mqreid.data.image_check import find_unreadable, image_problem, list_files

MARKET = Path("market1501") / "Market-1501-v15.09.15"
GOOD = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c2s3_070952_01.jpg",
                           "0009_c4s1_000100_01.jpg"],
    "query": ["0002_c2s1_000301_00.jpg", "0007_c6s1_001234_00.jpg"],
    "bounding_box_test": ["0002_c1s1_000401_01.jpg", "0007_c3s1_000801_02.jpg", "0000_c5s1_000033_04.jpg"],
}
GARBAGE = "bounding_box_train/0009_c1s1_000200_01.jpg"  # not an image: 0009's other image stays
EMPTY = "bounding_box_test/0002_c6s1_000900_01.jpg"
TRUNCATED = "bounding_box_train/0007_c5s1_000300_01.jpg"


def noise_jpeg(path: Path, seed: int = 0) -> Path:
    """A 64 x 128 JPEG of noise: several KB, so that cutting it in half leaves its header whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """A Market-layout tree with one garbage, one empty and one truncated .jpg among valid ones."""
    base = tmp_path / MARKET
    for folder, names in GOOD.items():
        for i, name in enumerate(names):
            noise_jpeg(base / folder / name, i)
    (base / GARBAGE).write_bytes(b"<html>404 Not Found</html>\n" * 20)
    (base / EMPTY).write_bytes(b"")
    truncate(noise_jpeg(base / TRUNCATED, 99))
    return tmp_path


def test_the_truncated_file_keeps_a_readable_header(bad_tree: Path) -> None:
    with Image.open(bad_tree / MARKET / TRUNCATED) as img:  # what a header-only check would accept
        assert img.size == (64, 128)


def test_error_lists_every_unreadable_file_at_once(bad_tree: Path) -> None:
    with pytest.raises(DatasetError) as info:
        build_dataset("market1501", bad_tree, verbose=False)
    message = str(info.value)
    base = (bad_tree / MARKET).resolve()
    assert "market1501: 3 of 12 image files cannot be read (train 2, query 0, gallery 1)" in message
    assert f"{base / GARBAGE}: not an image file PIL can identify" in message
    assert f"{base / EMPTY}: empty file (0 bytes)" in message
    assert f"{base / TRUNCATED}: image file is truncated" in message
    assert "Replace or delete these files, or set dataset.on_bad_image=skip" in message
    assert " more" not in message  # three files: every one is named


def test_skip_drops_them_logs_and_the_statistics_follow(bad_tree: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="mqreid.data"):
        ds = build_dataset("market1501", bad_tree, on_bad_image="skip")
    base = (bad_tree / MARKET).resolve()
    kept = {Path(it.path).name for it in ds.train + ds.query + ds.gallery}
    assert kept == {name for names in GOOD.values() for name in names}
    # 0002, 0007, 0009 stay in train, relabelled 0..2; the gallery keeps its distractor (pid 0)
    assert sorted({it.pid for it in ds.train}) == [0, 1, 2] and len(ds.train) == 4
    assert len(ds.query) == 2 and len(ds.gallery) == 3
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    text = warning[0].getMessage()
    assert "leaving out 3 of 12 image files that cannot be read (train 2, query 0, gallery 1" in text
    assert all(str(base / name) in text for name in (GARBAGE, EMPTY, TRUNCATED))
    assert "  train    |     3 |        4 |         4" in caplog.text  # the statistics table counts the rest


def test_skip_relabels_train_when_an_id_loses_every_image(bad_tree: Path) -> None:
    (bad_tree / MARKET / "bounding_box_train" / "0009_c4s1_000100_01.jpg").write_bytes(b"")
    ds = build_dataset("market1501", bad_tree, verbose=False, on_bad_image="skip")
    assert sorted({it.pid for it in ds.train}) == [0, 1]  # 0002, 0007: still contiguous


def test_skip_that_empties_a_split_says_so(bad_tree: Path) -> None:
    for path in (bad_tree / MARKET / "query").iterdir():
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"the query split under .* is empty after leaving out its 2 unreadable"):
        build_dataset("market1501", bad_tree, verbose=False, on_bad_image="skip")


def test_unknown_policy_is_refused(bad_tree: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset.on_bad_image=ignore: expected one of error, skip"):
        build_dataset("market1501", bad_tree, on_bad_image="ignore")


def test_loader_names_the_truncated_file_instead_of_decoding_part_of_it(bad_tree: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing mqreid leaves PIL strict
    truncated = str((bad_tree / MARKET / TRUNCATED).resolve())
    ds = ImageDataset([(truncated, 7, 4)])
    with pytest.raises(ImageReadError) as info:
        ds[0]
    message = str(info.value)
    assert message.startswith(f"cannot read image {truncated}: image file is truncated")
    assert "not left out, even with dataset.on_bad_image=skip" in message and "Replace or delete the file" in message
    with pytest.raises(ImageReadError, match=f"cannot read image {truncated}"):
        next(iter(build_test_loader([(truncated, 7, 4)], transform=None, batch_size=1)))


def test_complete_files_pass_including_bytes_after_the_jpeg_end(tmp_path: Path) -> None:
    good = noise_jpeg(tmp_path / "good.jpg")
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good.read_bytes() + b"\x00" * 64)  # some cameras pad their files
    png = tmp_path / "good.png"
    Image.open(good).save(png)
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(png.read_bytes()[:-30])
    assert [image_problem(str(p)) for p in (good, padded, png)] == [None, None, None]
    assert image_problem(str(broken_png)) is not None
    paths = [str(good), str(broken_png), str(padded)] * 300  # more than one chunk of the thread pool
    assert list(find_unreadable(paths)) == [str(broken_png)]


def test_long_lists_are_cut_after_twenty_names() -> None:
    text = list_files({f"/data/{i:02d}.jpg": "empty file (0 bytes)" for i in range(25)})
    lines = text.split("\n")
    assert len(lines) == 21 and lines[0] == "  /data/00.jpg: empty file (0 bytes)" and lines[-1] == "  and 5 more"
