"""Tests of the procedural Market-layout benchmark (tiny sizes; a few seconds in all)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import ListConfig
from PIL import Image

from mqreid.data import DatasetError, build_dataset
from mqreid.data.layout import parse_folder
from mqreid.data.market1501 import Market1501
from mqreid.data.synthetic import (Nuisances, Synthetic, SyntheticHard, SyntheticMarket, SyntheticMSMT17, SyntheticV2,
                                   SyntheticV2Hard)
from mqreid.data.synthetic import builder, person, plan, rand, render

TINY = dict(num_train_ids=4, num_test_ids=3, num_cameras=2, images_per_id=(4, 6), num_distractors=2,
            height=32, width=16, seed=3)
NAME = re.compile(r"^(\d{4})_c(\d+)s1_(\d{6})_00\.jpg$")
# exact split sizes on 12 cameras (two-digit camera numbers), with distractors
SIZED = dict(num_train_ids=5, num_test_ids=4, num_cameras=12, num_train_images=31, num_query=13, num_gallery=19,
             num_distractors=3, height=32, width=16, seed=5)
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

    monkeypatch.setattr(builder, "_generate", fail)
    again = Synthetic(folder.parent.parent, verbose=False, **TINY)
    assert again.root == tiny.root and again.train == tiny.train
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_write = render._write_jpeg

    def write_then_fail(image, path):
        calls.append(path)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        real_write(image, path)

    monkeypatch.setattr(render, "_write_jpeg", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        Synthetic(tmp_path, verbose=False, **TINY)
    assert list((tmp_path / "synthetic").iterdir()) == []  # neither the final nor the temporary folder
    monkeypatch.setattr(render, "_write_jpeg", real_write)
    assert Synthetic(tmp_path, verbose=False, **TINY).train


def test_plan_covers_at_least_two_cameras_with_two_images_each():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        cams = plan._plan_identity(rng, num_cameras=6, images_per_id=(4, 20))
        counts = Counter(cams)
        assert 4 <= len(cams) <= 20
        assert len(counts) >= 2 and min(counts.values()) >= 2
        assert set(counts) <= set(range(6))
        assert cams == sorted(cams)


@pytest.mark.parametrize(
    "option, value",
    [("num_train_ids", 0), ("num_test_ids", 0), ("num_cameras", 1), ("num_cameras", 100),
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


def test_two_digit_cameras_parse_and_real_market_names_still_do(tmp_path):
    names = {"0001_c1s1_000000_00.jpg": (1, 0), "0001_c9s1_000001_00.jpg": (1, 8),
             "0002_c10s1_000002_00.jpg": (2, 9), "0002_c12s1_000003_00.jpg": (2, 11),
             "0000_c15s1_000004_00.jpg": (0, 14)}
    for name in names:
        (tmp_path / name).write_bytes(b"")
    items = parse_folder(tmp_path, builder._PATTERN, layout_hint="test", skip_pids=())
    assert {Path(it.path).name: (it.pid, it.camid) for it in items} == names
    m = Market1501.pattern.search("0002_c1s1_000451_03.jpg")  # the real release's names: one-digit cameras
    assert (int(m.group(1)), int(m.group(2))) == (2, 1)
    assert Market1501.pattern.search("-1_c3s2_000001_00.jpg").groups() == ("-1", "3")


@pytest.fixture(scope="module")
def sized(tmp_path_factory) -> Synthetic:
    return Synthetic(tmp_path_factory.mktemp("data"), verbose=False, **SIZED)


def test_twelve_cameras_generate_and_load_with_their_camera_ids(sized):
    cams = set()
    for items in (sized.train, sized.query, sized.gallery):
        for it in items:
            m = NAME.match(Path(it.path).name)
            assert m and it.camid == int(m.group(2)) - 1
            cams.add(it.camid)
    assert cams <= set(range(12)) and max(cams) >= 9  # two-digit camera numbers occur
    assert "_cam12_n31-13-19_" in Path(sized.root).name


def test_split_sizes_are_exact(sized):
    assert len(sized.train) == SIZED["num_train_images"] and sized.num_train_pids == SIZED["num_train_ids"]
    assert len(sized.query) == SIZED["num_query"]
    assert len(sized.gallery) == SIZED["num_gallery"] + SIZED["num_distractors"]
    assert sum(it.pid == 0 for it in sized.gallery) == SIZED["num_distractors"]
    query_cams = Counter((q.pid, q.camid) for q in sized.query)
    assert max(query_cams.values()) == 1  # one query per (id, camera)
    assert len({q.pid for q in sized.query}) == SIZED["num_test_ids"]
    for q in sized.query:
        assert any(g.pid == q.pid and g.camid == q.camid for g in sized.gallery)
        assert any(g.pid == q.pid and g.camid != q.camid for g in sized.gallery)
    train_cams = Counter((it.pid, it.camid) for it in sized.train)
    assert min(train_cams.values()) >= 2 and all(
        len({c for p, c in train_cams if p == pid}) >= 2 for pid in range(SIZED["num_train_ids"]))


def test_allocate_respects_the_bounds_and_the_total():
    for seed in range(50):
        rng = np.random.default_rng(seed)
        low = rng.integers(0, 4, 30)
        counts = plan._allocate(rng, int(low.sum()) + 70, low, 6)
        assert counts.sum() == low.sum() + 70 and (counts >= low).all() and (counts <= 6).all()


def test_files_do_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "_JOB_IMAGES", 6)  # several jobs of identities and of distractors
    one = Synthetic(tmp_path / "one", verbose=False, workers=1, **SIZED)
    two = Synthetic(tmp_path / "two", verbose=False, workers=2, **SIZED)
    files = files_of(Path(one.root))
    assert len(files) == SIZED["num_train_images"] + SIZED["num_query"] + SIZED["num_gallery"] + 3
    assert files == files_of(Path(two.root))
    small = {**TINY, "num_cameras": 3}
    assert files_of(Path(Synthetic(tmp_path / "a", verbose=False, workers=1, **small).root)) == \
        files_of(Path(Synthetic(tmp_path / "b", verbose=False, workers=2, **small).root))


def test_a_failing_worker_leaves_nothing(tmp_path, monkeypatch):
    def fail(image, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(render, "_write_jpeg", fail)  # inherited by the worker processes
    with pytest.raises(RuntimeError, match="disk full"):
        Synthetic(tmp_path, verbose=False, workers=2, **SIZED)
    assert list((tmp_path / "synthetic").iterdir()) == []


@pytest.mark.parametrize(
    "option, value",
    [("num_train_images", None), ("num_train_images", 19), ("num_query", 7), ("num_query", 49),
     ("num_gallery", 12)],
)
def test_invalid_split_sizes_name_the_option(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"Synthetic: [a-z_, ]*{option}[a-z_, ]* must be"):
        Synthetic(tmp_path, verbose=False, **{**SIZED, option: value})
    assert not (tmp_path / "synthetic").exists()


def test_invalid_workers(tmp_path):
    with pytest.raises(ValueError, match="workers must be None or >= 1"):
        Synthetic(tmp_path, verbose=False, workers=0, **TINY)


@pytest.mark.parametrize("name, cls", [("synthetic_market", SyntheticMarket), ("synthetic_msmt17", SyntheticMSMT17),
                                       ("synthetic_hard", SyntheticHard), ("synthetic_v2", SyntheticV2),
                                       ("synthetic_v2_hard", SyntheticV2Hard)])
def test_sized_sets_match_their_configs_and_build_by_name(tmp_path, name, cls):
    from conftest import compose_config

    node = compose_config([f"dataset={name}"]).dataset
    assert node.name == name
    assert {k: node[k] for k in cls.defaults} == cls.defaults  # the YAML states the class's sizes
    tiny = dict(num_train_ids=3, num_test_ids=2, num_train_images=12, num_query=4, num_gallery=5,
                num_distractors=1, height=32, width=16)
    ds = build_dataset(name, tmp_path, verbose=False, **tiny)
    assert isinstance(ds, cls) and ds.name == name and Path(ds.root).parent == tmp_path / name
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (12, 4, 6)
    assert ds.params["num_cameras"] == cls.defaults["num_cameras"]


def test_real_sizes():
    m, s = SyntheticMarket.defaults, SyntheticMSMT17.defaults
    assert (m["num_train_ids"], m["num_train_images"], m["num_cameras"], m["num_query"]) == (751, 12936, 6, 3368)
    assert m["num_gallery"] + m["num_distractors"] == 15913
    assert (s["num_train_ids"], s["num_train_images"], s["num_cameras"], s["num_query"]) == (1041, 32621, 15, 11659)
    assert s["num_gallery"] + s["num_distractors"] == 82161
    assert (m["height"], m["width"]) == (s["height"], s["width"]) == (256, 128)


@pytest.mark.parametrize("preset, name, real", [("market1501_dbscan", "synthetic_market", "market1501"),
                                                ("market1501_infomap", "synthetic_market", "market1501"),
                                                ("msmt17_dbscan", "synthetic_msmt17", "msmt17"),
                                                ("msmt17_infomap", "synthetic_msmt17", "msmt17")])
def test_presets_run_unchanged_on_the_sized_sets(preset, name, real):
    """``experiment=<preset> dataset=<synthetic set>``: the command line's dataset wins over the preset's,
    and everything but the dataset is the preset's on the real dataset (recipe: the real one's)."""
    from omegaconf import OmegaConf

    from conftest import compose_config

    on_synthetic = compose_config([f"experiment={preset}", f"dataset={name}", "backbone.pretrained=false"])
    on_real = compose_config([f"experiment={preset}", "backbone.pretrained=false"])
    assert on_synthetic.dataset.name == name and on_real.dataset.name == real
    a, b = OmegaConf.to_container(on_synthetic), OmegaConf.to_container(on_real)
    a.pop("dataset"), b.pop("dataset")
    assert a == b
    assert on_synthetic.backbone.arch == "resnet50" and not on_synthetic.backbone.pretrained
    assert (on_synthetic.input.height, on_synthetic.input.width) == (256, 128)
    assert (on_synthetic.train.batch_size, on_synthetic.train.num_instances) == (256, 16)
    assert on_synthetic.train.sampler == "random_multiple_gallery" and on_synthetic.train.bn_group == 64
    assert on_synthetic.train.iters == (400 if real == "msmt17" else 200)
    assert on_synthetic.clusterer._target_.endswith("DBSCANClusterer" if "dbscan" in preset else "InfomapClusterer")
    assert on_synthetic.memory.queue_size == 16 and on_synthetic.temp._target_.endswith("LearnableTemperature")


# the hard variant's nuisances on a tiny sized set: long visits so that bursts are visible
HARD = dict(SIZED, nuisances=dict(time_slots=3, outfits=2, burst=4, lookalikes=0.5, box_jitter=1.5, count_spread=1.0))


def test_no_nuisances_is_the_plain_generator(tmp_path):
    """Nuisances at their defaults draw nothing: the folder and every byte are those of the plain set."""
    plain = Synthetic(tmp_path / "a", verbose=False, **SIZED)
    neutral = Synthetic(tmp_path / "b", verbose=False, **SIZED, nuisances=dict(time_slots=1, burst=1, outfits=1))
    assert Path(plain.root).name == Path(neutral.root).name and "_ts" not in Path(plain.root).name
    assert files_of(Path(plain.root)) == files_of(Path(neutral.root))
    assert Nuisances().tag() == "" and Nuisances(burst=4, lookalikes=0.15).tag() == "_bu4_la0.15"


def test_hard_sets_are_deterministic_named_by_their_nuisances_and_worker_independent(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "_JOB_IMAGES", 6)
    one = Synthetic(tmp_path / "one", verbose=False, workers=1, **HARD)
    two = Synthetic(tmp_path / "two", verbose=False, workers=2, **HARD)
    assert Path(one.root).name.endswith("_ts3_of2_bu4_la0.5_bj1.5_cs1.0")
    assert files_of(Path(one.root)) == files_of(Path(two.root))
    plain = files_of(Path(Synthetic(tmp_path / "plain", verbose=False, **SIZED).root))
    hard = files_of(Path(one.root))
    assert len(plain) == len(hard)  # the same split sizes
    shared = plain.keys() & hard.keys()  # the long tail moves some images to other identities
    assert shared and all(plain[k] != hard[k] for k in shared)  # the nuisances change every image


def test_burst_frames_are_near_duplicates(tmp_path):
    """Frames of one visit differ far less than two images of one identity from different visits."""
    ds = Synthetic(tmp_path, verbose=False, **{**SIZED, "height": 64, "width": 32,
                                               "nuisances": dict(burst=8)})
    renderer = render._Renderer(tmp_path, **ds.params)
    within, across = [], []
    for pid, images in plan._plan_set(**ds.params)[:SIZED["num_train_ids"]]:
        visits = [v for v in renderer.visits(pid, images) if len(v) >= 2]
        pixels = {f: np.asarray(Image.open(Path(ds.root) / s / f"{pid:04d}_c{c + 1}s1_{f:06d}_00.jpg"), np.float32)
                  for s, c, f in images}
        for v in visits:
            within.append(np.abs(pixels[v[0][2]] - pixels[v[1][2]]).mean())
        firsts = [v[0][2] for v in renderer.visits(pid, images)]
        across += [np.abs(pixels[a] - pixels[b]).mean() for a, b in zip(firsts, firsts[1:])]
    assert within and across and np.mean(within) < 0.5 * np.mean(across)


def test_outfits_and_lookalikes_change_clothes_only(tmp_path):
    params = dict(SIZED, camera_shift=1.0, noise=1.0, occlusion=0.2, nuisances=Nuisances(outfits=3, lookalikes=1.0))
    renderer = render._Renderer(tmp_path, **params)
    for pid in range(1, SIZED["num_train_ids"] + SIZED["num_test_ids"] + 1):
        own = person._make_identity(rand._rng(SIZED["seed"], rand._STREAM_ID, pid))
        outfits = renderer.outfits(pid)
        assert len(outfits) == 3
        for outfit in outfits:
            assert outfit.height == own.height and np.array_equal(outfit.skin, own.skin)  # the same person
        assert not np.array_equal(outfits[0].upper, own.upper)  # every identity is a look-alike here
        assert not np.array_equal(outfits[1].upper, outfits[2].upper)


@pytest.mark.parametrize("value, message", [
    (dict(burst=0), r"nuisances\.burst must be >= 1, got 0"),
    (dict(lookalikes=2), r"nuisances\.lookalikes must be in \[0, 1\], got 2"),
    (dict(outfits=1.5), r"nuisances\.outfits must be an integer, got 1\.5"),
    (dict(bursts=2), r"nuisances\.bursts is not a nuisance; valid: "),
    ("strong", r"nuisances must be a mapping"),
])
def test_invalid_nuisances_name_the_key(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        Synthetic(tmp_path, verbose=False, **SIZED, nuisances=value)
    assert not (tmp_path / "synthetic").exists()
