"""Dataset parsers on tiny hand-built folder trees of real JPEG files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from mqreid.data import DATASETS, DatasetError, ImageItem, build_dataset
from mqreid.data.custom import count_matchable_queries


def write_jpeg(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (value, 255 - value, 40)).save(path, "JPEG")
    return path


def make_tree(base: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        for i, name in enumerate(names):
            write_jpeg(base / folder / name, 10 * i)
    return base


def as_tuples(items: list[ImageItem]) -> set[tuple[str, int, int]]:
    return {(Path(p).name, pid, cam) for p, pid, cam in items}


def check_paths(ds) -> None:
    for items in (ds.train, ds.query, ds.gallery):
        for it in items:
            assert isinstance(it, ImageItem) and Path(it.path).is_absolute() and Path(it.path).is_file()
            assert isinstance(it.pid, int) and isinstance(it.camid, int)


MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c2s3_070952_01.jpg",
                           "-1_c1s1_000001_00.jpg", "0000_c6s1_000002_00.jpg"],
    "query": ["0002_c2s1_000301_00.jpg", "0007_c6s1_001234_00.jpg"],
    "bounding_box_test": ["0002_c1s1_000401_01.jpg", "0007_c3s1_000801_02.jpg", "0000_c5s1_000033_04.jpg",
                          "-1_c4s1_000099_01.jpg"],
    "gt_bbox": ["0002_c1s1_000451_03.jpg", "weird_name.jpg"],
    "bounding_box_train_camstyle": ["not_a_market_name.jpg"],
}


@pytest.fixture
def market_root(tmp_path: Path) -> Path:
    base = make_tree(tmp_path / "market1501" / "Market-1501-v15.09.15", MARKET_FILES)
    (base / "bounding_box_train" / "Thumbs.db").write_bytes(b"\x00\x01")
    (base / "query" / "readme.txt").write_text("not an image")
    return tmp_path


def test_market1501_junk_distractors_relabel(market_root: Path) -> None:
    ds = build_dataset("market1501", market_root, verbose=False)
    check_paths(ds)
    # junk -1 dropped everywhere, distractor 0 dropped from train; pids 2, 7 -> 0, 1; cameras 1-based -> 0-based
    assert as_tuples(ds.train) == {("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c3s1_000551_01.jpg", 0, 2),
                                   ("0007_c2s3_070952_01.jpg", 1, 1)}
    assert as_tuples(ds.query) == {("0002_c2s1_000301_00.jpg", 2, 1), ("0007_c6s1_001234_00.jpg", 7, 5)}
    assert as_tuples(ds.gallery) == {("0002_c1s1_000401_01.jpg", 2, 0), ("0007_c3s1_000801_02.jpg", 7, 2),
                                     ("0000_c5s1_000033_04.jpg", 0, 4)}
    assert ds.num_train_pids == 2 and ds.train_labels_known
    assert all("gt_bbox" not in it.path for it in ds.train + ds.query + ds.gallery)


def test_market1501_missing_root_names_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Market-1501-v15.09.15.*bounding_box_train"):
        build_dataset("market1501", tmp_path)


def test_market1501_missing_split_folder(market_root: Path) -> None:
    folder = market_root / "market1501" / "Market-1501-v15.09.15" / "query"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(DatasetError, match=r"missing folder .*query.*expected layout"):
        build_dataset("market1501", market_root)


def test_market1501_empty_split(market_root: Path) -> None:
    folder = market_root / "market1501" / "Market-1501-v15.09.15" / "bounding_box_test"
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"no usable images in .*bounding_box_test.*expected layout"):
        build_dataset("market1501", market_root)


def test_market1501_unparsable_name(market_root: Path) -> None:
    bad = write_jpeg(market_root / "market1501" / "Market-1501-v15.09.15" / "query" / "person.jpg")
    with pytest.raises(DatasetError, match=f"cannot parse file name {bad}"):
        build_dataset("market1501", market_root)


def test_dukemtmcreid(tmp_path: Path) -> None:
    make_tree(tmp_path / "dukemtmcreid" / "DukeMTMC-reID", {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg", "0005_c1_f0000002.jpg"],
        "query": ["0001_c1_f0046999.jpg"],
        "bounding_box_test": ["0001_c5_f0040000.jpg", "0009_c7_f0000003.jpg"],
    })
    ds = build_dataset("dukemtmcreid", tmp_path, verbose=False)
    check_paths(ds)
    assert as_tuples(ds.train) == {("0001_c2_f0046182.jpg", 0, 1), ("0001_c8_f0000001.jpg", 0, 7),
                                   ("0005_c1_f0000002.jpg", 1, 0)}
    assert as_tuples(ds.query) == {("0001_c1_f0046999.jpg", 1, 0)}
    assert as_tuples(ds.gallery) == {("0001_c5_f0040000.jpg", 1, 4), ("0009_c7_f0000003.jpg", 9, 6)}


def write_msmt_official(root: Path) -> Path:
    base = root / "msmt17" / "MSMT17_V1"
    lists = {
        "list_train.txt": ("train", ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                     "0000/0000_001_05_0303morning_0016_0.jpg 0",
                                     "0003/0003_000_15_0303noon_0017_1.jpg 3"]),
        "list_val.txt": ("train", ["0001/0001_000_02_0303morning_0018_0.jpg 1"]),
        "list_query.txt": ("test", ["0010/0010_000_03_0303afternoon_0001_0.jpg 10"]),
        "list_gallery.txt": ("test", ["0010/0010_001_04_0303afternoon_0002_0.jpg 10",
                                      "0011/0011_000_03_0303afternoon_0003_0.jpg 11"]),
    }
    for list_name, (folder, lines) in lists.items():
        for line in lines:
            write_jpeg(base / folder / line.split()[0])
        (base / list_name).write_text("\n".join(lines) + "\n")
    return base


def test_msmt17_official_lists_val_merged(tmp_path: Path) -> None:
    write_msmt_official(tmp_path)
    ds = build_dataset("msmt17", tmp_path, verbose=False)
    check_paths(ds)
    # train + val merged, pids 0, 1, 3 -> 0, 1, 2; camera = third name field, 1-based -> 0-based
    assert as_tuples(ds.train) == {("0000_000_01_0303morning_0015_0.jpg", 0, 0),
                                   ("0000_001_05_0303morning_0016_0.jpg", 0, 4),
                                   ("0003_000_15_0303noon_0017_1.jpg", 2, 14),
                                   ("0001_000_02_0303morning_0018_0.jpg", 1, 1)}
    assert as_tuples(ds.query) == {("0010_000_03_0303afternoon_0001_0.jpg", 10, 2)}
    assert as_tuples(ds.gallery) == {("0010_001_04_0303afternoon_0002_0.jpg", 10, 3),
                                     ("0011_000_03_0303afternoon_0003_0.jpg", 11, 2)}
    assert all("/train/" in it.path for it in ds.train) and all("/test/" in it.path for it in ds.gallery)


def test_msmt17_bad_list_line_names_file_and_line(tmp_path: Path) -> None:
    base = write_msmt_official(tmp_path)
    with (base / "list_query.txt").open("a") as f:
        f.write("0010/0010_000_03_0303afternoon_0001_0.jpg\n")  # pid missing
    with pytest.raises(DatasetError, match=r"list_query.txt, line 2: cannot parse"):
        build_dataset("msmt17", tmp_path)


def test_msmt17_listed_file_missing(tmp_path: Path) -> None:
    base = write_msmt_official(tmp_path)
    (base / "test" / "0011" / "0011_000_03_0303afternoon_0003_0.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_gallery.txt, line 2: listed image .*0011_000_03.* does not exist"):
        build_dataset("msmt17", tmp_path)


def test_msmt17_converted_layout(tmp_path: Path) -> None:
    make_tree(tmp_path / "msmt17" / "MSMT17_V1", {
        "bounding_box_train": ["0000_c1_0000.jpg", "0000_c12_0001.jpg", "0004_c3_0002.jpg"],
        "query": ["0100_c15_0003.jpg"],
        "bounding_box_test": ["0100_c2_0004.jpg"],
    })
    ds = build_dataset("msmt17", tmp_path, verbose=False)
    check_paths(ds)
    # MSMT17 pids start at 0: pid 0 is a person, not a distractor; 0, 4 -> 0, 1
    assert as_tuples(ds.train) == {("0000_c1_0000.jpg", 0, 0), ("0000_c12_0001.jpg", 0, 11), ("0004_c3_0002.jpg", 1, 2)}
    assert as_tuples(ds.query) == {("0100_c15_0003.jpg", 100, 14)}
    assert as_tuples(ds.gallery) == {("0100_c2_0004.jpg", 100, 1)}


def test_msmt17_neither_layout(tmp_path: Path) -> None:
    (tmp_path / "msmt17" / "MSMT17_V1").mkdir(parents=True)
    with pytest.raises(DatasetError, match="MSMT17_V1.*list_.*bounding_box_train"):
        build_dataset("msmt17", tmp_path)


@pytest.mark.parametrize("cams", [(1, 2, 3, 4, 5, 6), (3, 4, 8, 10, 11, 12)])
def test_personx_camera_mapping(tmp_path: Path, cams: tuple[int, ...]) -> None:
    names = [f"{pid:04d}_c{cam}s1_{i:04d}.jpg" for i, (pid, cam) in enumerate(zip([1, 1, 2, 2, 3, 3], cams))]
    make_tree(tmp_path / "personx" / "PersonX", {
        "bounding_box_train": names[:4], "query": [names[4]], "bounding_box_test": [names[5]],
    })
    ds = build_dataset("personx", tmp_path, verbose=False)
    check_paths(ds)
    # the six camera numbers, sorted, become 0..5
    assert as_tuples(ds.train) == {(names[0], 0, 0), (names[1], 0, 1), (names[2], 1, 2), (names[3], 1, 3)}
    assert as_tuples(ds.query) == {(names[4], 3, 4)}
    assert as_tuples(ds.gallery) == {(names[5], 3, 5)}


def test_veri(tmp_path: Path) -> None:
    make_tree(tmp_path / "veri" / "VeRi", {
        "image_train": ["0001_c001_00016450_0.jpg", "0001_c020_00016460_0.jpg", "0004_c010_00000001_0.jpg",
                        "-1_c002_00000001_0.jpg"],
        "image_query": ["0002_c002_00030600_1.jpg"],
        "image_test": ["0002_c019_00030610_1.jpg", "-1_c003_00000002_0.jpg"],
    })
    ds = build_dataset("veri", tmp_path, verbose=False)
    check_paths(ds)
    assert as_tuples(ds.train) == {("0001_c001_00016450_0.jpg", 0, 0), ("0001_c020_00016460_0.jpg", 0, 19),
                                   ("0004_c010_00000001_0.jpg", 1, 9)}
    assert as_tuples(ds.query) == {("0002_c002_00030600_1.jpg", 2, 1)}
    assert as_tuples(ds.gallery) == {("0002_c019_00030610_1.jpg", 2, 18)}


def test_veri_missing_folder(tmp_path: Path) -> None:
    make_tree(tmp_path / "veri" / "VeRi", {"image_train": ["0001_c001_00016450_0.jpg"]})
    with pytest.raises(DatasetError, match=r"missing folder .*image_query.*image_train/, image_query/, image_test/"):
        build_dataset("veri", tmp_path)


def test_custom_folder_with_unknown_train_pids(tmp_path: Path) -> None:
    make_tree(tmp_path, {
        "bounding_box_train": ["0003_c1_a.jpg", "0008_c2_b.jpg", "frame_000123.jpg", "-1_c2_c.jpg"],
        "query": ["0001_c1_q.jpg"],
        "bounding_box_test": ["0001_c2_g.jpg", "0002_c1_g.jpg"],
    })
    ds = build_dataset("custom", tmp_path, verbose=False)
    check_paths(ds)
    assert as_tuples(ds.train) == {("0003_c1_a.jpg", 0, 0), ("0008_c2_b.jpg", 1, 1), ("frame_000123.jpg", -1, 0),
                                   ("-1_c2_c.jpg", -1, 1)}
    assert not ds.train_labels_known and ds.num_train_pids == 2
    assert as_tuples(ds.query) == {("0001_c1_q.jpg", 1, 0)}


def test_custom_folder_logs_how_many_training_images_carry_no_id(tmp_path: Path, caplog) -> None:
    make_tree(tmp_path, {
        "bounding_box_train": ["0003_c1_a.jpg", "0008_c2_b.jpg", "frame_000123.jpg", "-1_c2_c.jpg", "IMG_1.jpg"],
        "query": ["0001_c1_q.jpg"],
        "bounding_box_test": ["0001_c2_g.jpg"],
    })
    with caplog.at_level(logging.INFO, logger="mqreid.data.custom"):
        build_dataset("custom", tmp_path)
    assert f"{tmp_path}: 3 of 5 training images carry no id" in caplog.text
    caplog.clear()
    (tmp_path / "bounding_box_train" / "IMG_1.jpg").rename(tmp_path / "bounding_box_train" / "0009_c1_x.jpg")
    (tmp_path / "bounding_box_train" / "frame_000123.jpg").unlink()
    (tmp_path / "bounding_box_train" / "-1_c2_c.jpg").unlink()
    with caplog.at_level(logging.INFO, logger="mqreid.data.custom"):
        assert build_dataset("custom", tmp_path).train_labels_known
    assert "carry no id" not in caplog.text


def test_custom_folder_unparsable_query_name(tmp_path: Path) -> None:
    make_tree(tmp_path, {"bounding_box_train": ["x.jpg"], "query": ["q.jpg"], "bounding_box_test": ["0001_c2_g.jpg"]})
    with pytest.raises(DatasetError, match=r"cannot parse file name .*q\.jpg"):
        build_dataset("custom", tmp_path)


def test_custom_query_without_valid_match(tmp_path: Path) -> None:
    # the only gallery image of pid 1 comes from the query's own camera: excluded by the protocol
    make_tree(tmp_path, {"bounding_box_train": ["x.jpg"], "query": ["0001_c1_q.jpg"],
                         "bounding_box_test": ["0001_c1_g.jpg", "0002_c2_g.jpg"]})
    with pytest.raises(DatasetError, match="no query has a valid match in the gallery.*different camera.*nan"):
        build_dataset("custom", tmp_path)


def write_csv(tmp_path: Path, rows: list[str], header: str = "path,pid,camid,split") -> Path:
    for name in ("imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg", "imgs/q.jpg", "imgs/g1.jpg", "imgs/g2.jpg"):
        write_jpeg(tmp_path / "data" / name)
    csv_file = tmp_path / "data" / "list.csv"
    csv_file.write_text("\n".join([header, *rows]) + "\n")
    return csv_file


CSV_ROWS = ["imgs/a.jpg,5,0,train", "imgs/b.jpg,,1,train", "imgs/c.jpg,-1,1,train", "imgs/q.jpg,7,0,query",
            "imgs/g1.jpg,7,1,gallery", "imgs/g2.jpg,9,0,gallery"]


def test_custom_csv(tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path, CSV_ROWS)
    ds = build_dataset("custom", tmp_path / "data", csv="list.csv", verbose=False)
    check_paths(ds)
    assert as_tuples(ds.train) == {("a.jpg", 0, 0), ("b.jpg", -1, 1), ("c.jpg", -1, 1)}
    assert as_tuples(ds.query) == {("q.jpg", 7, 0)}
    assert as_tuples(ds.gallery) == {("g1.jpg", 7, 1), ("g2.jpg", 9, 0)}
    assert all(Path(it.path).parent == (tmp_path / "data" / "imgs").resolve() for it in ds.train)
    ds_abs = build_dataset("custom", tmp_path, csv=csv_file, verbose=False)  # absolute csv path
    assert ds_abs.train == ds.train


def test_custom_csv_with_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte-order mark; the header must still read path,pid,..."""
    plain = build_dataset("custom", tmp_path, csv=write_csv(tmp_path, CSV_ROWS), verbose=False)
    csv_file = tmp_path / "data" / "list.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())
    ds = build_dataset("custom", tmp_path, csv=csv_file, verbose=False)
    assert (ds.train, ds.query, ds.gallery) == (plain.train, plain.query, plain.gallery)


@pytest.mark.parametrize("bad_row, message", [
    ("imgs/a.jpg,5,0,validation", r"line 3: split 'validation' is not one of train, query, gallery"),
    ("imgs/a.jpg,five,0,train", r"line 3: pid 'five' / camid '0' are not integers"),
    ("imgs/a.jpg,,0,query", r"line 3: query images need a known pid"),
    ("imgs/missing.jpg,5,0,train", r"line 3: image .*missing.jpg does not exist"),
])
def test_custom_csv_bad_line(tmp_path: Path, bad_row: str, message: str) -> None:
    csv_file = write_csv(tmp_path, [CSV_ROWS[0], bad_row, *CSV_ROWS[1:]])
    with pytest.raises(DatasetError, match=f"list.csv, {message}"):
        build_dataset("custom", tmp_path, csv=csv_file)


def test_custom_csv_bad_header_and_empty_split(tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path, CSV_ROWS, header="file,pid,camid,split")
    with pytest.raises(DatasetError, match="expected columns path,pid,camid,split"):
        build_dataset("custom", tmp_path, csv=csv_file)
    csv_file = write_csv(tmp_path, [r for r in CSV_ROWS if not r.endswith("query")])
    with pytest.raises(DatasetError, match="split=query"):
        build_dataset("custom", tmp_path, csv=csv_file)


def test_count_matchable_queries_against_loop() -> None:
    query = [ImageItem("q", pid, cam) for pid, cam in [(1, 0), (1, 1), (2, 0), (3, 2)]]
    gallery = [ImageItem("g", pid, cam) for pid, cam in [(1, 0), (2, 0), (2, 0), (3, 1), (3, 2), (4, 5)]]
    expected = sum(any(g.pid == q.pid and g.camid != q.camid for g in gallery) for q in query)
    assert count_matchable_queries(query, gallery) == expected == 2


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'market'.*market1501.*synthetic"):
        build_dataset("market", tmp_path)
    assert set(DATASETS) == {"market1501", "dukemtmcreid", "msmt17", "personx", "veri", "custom", "synthetic"}
