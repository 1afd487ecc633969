"""Tests of the procedural Market-layout benchmark (tiny sizes; a few seconds in all)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import ListConfig
from PIL import Image

from mqreid.data import DatasetError, synthetic
from mqreid.data.synthetic import Synthetic

TINY = dict(num_train_ids=4, num_test_ids=3, num_cameras=2, images_per_id=(4, 6), num_distractors=2,
            height=32, width=16, seed=3)
NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_00\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Synthetic:
    return Synthetic(tmp_path_factory.mktemp("data"), verbose=False, **TINY)


def test_market_layout_and_names(tiny):
    folder = Path(tiny.root)
    assert folder.parent.name == "synthetic"
    assert folder.name == Synthetic.folder_name(**{**TINY, "camera_shift": 1.0, "noise": 1.0, "occlusion": 0.2})
    assert sorted(p.name for p in folder.iterdir()) == sorted(SPLITS)
    pids_by_split = {}
    for split in SPLITS:
        names = [p.name for p in (folder / split).iterdir()]
        assert names, split
        parsed = [NAME.match(n) for n in names]
        assert all(parsed), [n for n, m in zip(names, parsed) if m is None]
        assert all(1 <= int(m.group(2)) <= TINY["num_cameras"] for m in parsed)
        pids_by_split[split] = Counter(int(m.group(1)) for m in parsed)
        with Image.open(folder / split / names[0]) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (TINY["width"], TINY["height"]))
    n_train = TINY["num_train_ids"]
    assert set(pids_by_split["bounding_box_train"]) == set(range(1, n_train + 1))
    test_ids = set(range(n_train + 1, n_train + TINY["num_test_ids"] + 1))
    assert set(pids_by_split["query"]) == test_ids
    assert set(pids_by_split["bounding_box_test"]) == test_ids | {0}
    assert pids_by_split["bounding_box_test"][0] == TINY["num_distractors"]
    total = sum(sum(c.values()) for c in pids_by_split.values()) - TINY["num_distractors"]
    lo, hi = TINY["images_per_id"]
    assert (n_train + TINY["num_test_ids"]) * lo <= total <= (n_train + TINY["num_test_ids"]) * hi


def test_items_are_parsed_and_train_pids_relabelled(tiny):
    assert sorted({it.pid for it in tiny.train}) == list(range(TINY["num_train_ids"]))
    assert tiny.num_train_pids == TINY["num_train_ids"]
    for items in (tiny.train, tiny.query, tiny.gallery):
        for it in items:
            assert Path(it.path).is_file()
            assert it.camid == int(NAME.match(Path(it.path).name).group(2)) - 1  # 0-based camera
    query_ids = {q.pid for q in tiny.query}
    cameras_per_id = [len({it.camid for it in tiny.gallery if it.pid == pid}) for pid in query_ids]
    assert len(tiny.query) == sum(cameras_per_id)  # one query per (id, camera)


def test_every_query_has_a_cross_camera_gallery_match(tiny):
    for q in tiny.query:
        matches = [g for g in tiny.gallery if g.pid == q.pid and g.camid != q.camid]
        assert matches, q


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = Synthetic(tmp_path / "a", verbose=False, **TINY)
    b = Synthetic(tmp_path / "b", verbose=False, **TINY)
    files_a, files_b = files_of(Path(a.root)), files_of(Path(b.root))
    assert files_a and files_a == files_b
    c = Synthetic(tmp_path / "c", verbose=False, **{**TINY, "seed": 4})
    assert Path(c.root).name != Path(a.root).name
    files_c = files_of(Path(c.root))
    common = set(files_a) & set(files_c)
    assert any(files_a[k] != files_c[k] for k in common) or set(files_a) != set(files_c)


def test_existing_folder_is_reused(tiny, monkeypatch):
    folder = Path(tiny.root)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(synthetic, "_generate", fail)
    again = Synthetic(folder.parent.parent, verbose=False, **TINY)
    assert again.root == tiny.root and again.train == tiny.train
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_write = synthetic._write_jpeg

    def write_then_fail(image, path):
        calls.append(path)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        real_write(image, path)

    monkeypatch.setattr(synthetic, "_write_jpeg", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        Synthetic(tmp_path, verbose=False, **TINY)
    assert list((tmp_path / "synthetic").iterdir()) == []  # neither the final nor the temporary folder
    monkeypatch.setattr(synthetic, "_write_jpeg", real_write)
    assert Synthetic(tmp_path, verbose=False, **TINY).train


def test_plan_covers_at_least_two_cameras_with_two_images_each():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        cams = synthetic._plan_identity(rng, num_cameras=6, images_per_id=(4, 20))
        counts = Counter(cams)
        assert 4 <= len(cams) <= 20
        assert len(counts) >= 2 and min(counts.values()) >= 2
        assert set(counts) <= set(range(6))
        assert cams == sorted(cams)


@pytest.mark.parametrize(
    "option, value",
    [("num_train_ids", 0), ("num_test_ids", 0), ("num_cameras", 1), ("num_cameras", 10),
     ("images_per_id", (3, 8)), ("images_per_id", 5), ("images_per_id", (8, 5)), ("num_distractors", -1), ("height", 8),
     ("width", 4), ("camera_shift", -0.1), ("noise", -1.0), ("occlusion", 1.5), ("seed", -1)],
)
def test_invalid_parameters_name_the_option(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"Synthetic: {option} must be"):
        Synthetic(tmp_path, verbose=False, **{**TINY, option: value})
    assert not (tmp_path / "synthetic").exists()


def test_generated_files_are_checked_like_any_dataset(tmp_path):
    ds = Synthetic(tmp_path, verbose=False, **TINY)
    bad = Path(ds.gallery[0].path)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=rf"synthetic: 1 of \d+ image files cannot be read[^\n]*\n  {bad}: "):
        Synthetic(tmp_path, verbose=False, **TINY)
    kept = Synthetic(tmp_path, verbose=False, on_bad_image="skip", **TINY)
    assert len(kept.gallery) == len(ds.gallery) - 1 and str(bad) not in {it.path for it in kept.gallery}
    assert kept.train == ds.train and kept.query == ds.query


@pytest.mark.parametrize("convert", [True, False])
def test_hydra_lists_reach_the_generator(tiny, tmp_path, convert):
    """conf/dataset/synthetic.yaml converts lists (_convert_: all); a config without it still works."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import compose_config

    in_yaml = {"num_train_ids", "num_test_ids", "num_cameras", "camera_shift", "noise", "occlusion", "seed"}
    options = {**TINY, "camera_shift": 1.0, "noise": 1.0, "occlusion": 0.2}
    overrides = [f"{'' if k in in_yaml else '+'}dataset.{k}={v}" for k, v in options.items() if k != "images_per_id"]
    cfg = compose_config([*overrides, "+dataset.images_per_id=[4,6]"])
    node = OmegaConf.to_container(cfg.dataset)
    assert node.pop("_convert_") == "all" and node["on_bad_image"] == "error"
    if convert:
        node["_convert_"] = "all"
    ds = instantiate(OmegaConf.create(node), root=str(tmp_path), verbose=False)
    assert isinstance(ds.params["images_per_id"], list if convert else ListConfig)
    assert Path(ds.root).name == Path(tiny.root).name  # the folder of images_per_id=(4, 6)
    names = [(Path(p).name, pid, cam) for p, pid, cam in ds.train]
    assert names == [(Path(p).name, pid, cam) for p, pid, cam in tiny.train]
