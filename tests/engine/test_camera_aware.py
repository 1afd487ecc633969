"""Camera-aware settings end to end: the presets compose, a CSV without camera ids is refused at start-up for
every setting that needs them (named as typed), the proxy-balanced sampler, and a tiny camera-aware run that
logs both camera terms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mqreid.data import build_dataset
from mqreid.data.sampler import ProxyBalancedSampler
from mqreid.engine.trainer import Trainer
from mqreid.engine.validate import config_problems

from conftest import TINY_EPS, compose_config


def test_presets_compose_to_the_published_settings():
    caj = compose_config(["experiment=market1501_caj"])
    assert caj.clusterer.camera_aware is True and caj.clusterer.eps == 0.4
    assert (caj.clusterer.k1_intra, caj.clusterer.k1_inter, caj.clusterer.k2_intra, caj.clusterer.k2_inter) == (5, 20, 2, 4)
    assert (caj.clusterer.k2_intra_first, caj.clusterer.k2_inter_first) == (3, 3)
    assert caj.memory.momentum == 0.1 and caj.temp.value == 0.05 and caj.backbone.pooling == "avg"
    assert not caj.camera and caj.train.batch_size == 256 and caj.train.iters == 200
    msmt = compose_config(["experiment=msmt17_caj"])
    assert msmt.clusterer.eps == 0.6 and msmt.train.iters == 400 and msmt.clusterer.camera_aware is True
    cap = compose_config(["experiment=msmt17_cap"])
    assert cap.camera._target_ == "mqreid.memory.CameraProxies" and cap.train.sampler == "proxy_balanced"
    assert (cap.camera.temperature, cap.camera.momentum, cap.camera.hard_negatives) == (0.07, 0.2, 50)
    assert (cap.camera.inter_weight, cap.camera.inter_start_epoch) == (0.5, 5)
    for name in ("market1501_caj", "msmt17_caj", "market1501_cap", "msmt17_cap"):
        assert config_problems(compose_config([f"experiment={name}"])) == []


def _csv_dataset(tmp_path: Path, with_camid: bool) -> Path:
    rows = []
    for i, (pid, cam, split) in enumerate([(0, 0, "train"), (0, 1, "train"), (1, 0, "train"), (1, 1, "train"),
                                           (2, 0, "query"), (2, 1, "gallery"), (3, 0, "gallery")]):
        path = tmp_path / f"img{i}.jpg"
        Image.fromarray(np.full((16, 8, 3), 40 * i, np.uint8)).save(path)
        rows.append(f"{path.name},{pid},{cam},{split}" if with_camid else f"{path.name},{pid},{split}")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(("path,pid,camid,split" if with_camid else "path,pid,split") + "\n" + "\n".join(rows) + "\n")
    return csv_file


def test_a_csv_without_camera_ids_loads_and_refuses_camera_settings(tmp_path):
    _csv_dataset(tmp_path, with_camid=False)
    ds = build_dataset("custom", tmp_path, csv="list.csv", verbose=False)
    assert ds.cameras_known is False
    assert {it.camid for it in ds.train} == {0} and {it.camid for it in ds.query} == {0}
    assert {it.camid for it in ds.gallery} == {1}  # no gallery image is excluded as "same camera"
    base = ["dataset=custom", f"dataset.root={tmp_path}", "dataset.csv=list.csv"]
    problems = config_problems(compose_config([*base, "clusterer.camera_aware=true", "camera=proxies",
                                               "train.camera_centering=true"]))
    assert "clusterer.camera_aware=true: expected a dataset with camera ids, but dataset.csv=list.csv has no camid " \
           "column; add them (the CSV's camid column) or set clusterer.camera_aware=false" in problems
    assert any(p.startswith("camera=proxies: expected a dataset with camera ids") and p.endswith("camera=none")
               for p in problems)
    assert any(p.startswith("train.camera_centering=true: expected a dataset with camera ids") for p in problems)
    assert not [p for p in config_problems(compose_config(base)) if "camera" in p]


def test_a_csv_with_camera_ids_is_accepted(tmp_path):
    _csv_dataset(tmp_path, with_camid=True)
    assert build_dataset("custom", tmp_path, csv="list.csv", verbose=False).cameras_known
    cfg = compose_config(["dataset=custom", f"dataset.root={tmp_path}", "dataset.csv=list.csv",
                          "clusterer.camera_aware=true", "camera=proxies"])
    assert not [p for p in config_problems(cfg) if "camera" in p]


@pytest.mark.parametrize("key,value,expected", [
    ("camera.temperature", 0, "a number > 0"), ("camera.momentum", 2, "a number in [0, 1]"),
    ("camera.hard_negatives", -1, "an integer >= 0"), ("camera.intra_weight", -1, "a number >= 0"),
    ("camera.inter_weight", -0.5, "a number >= 0"), ("camera.inter_start_epoch", -1, "an integer >= 0"),
    ("camera.hard_negatives", "abc", "an integer"), ("clusterer.k1_intra", -2, "an integer >= 0"),
    ("clusterer.camera_aware", "maybe", "true or false"),
    ("camera.queue_size", 0, "null (momentum proxies) or an integer >= 1"),
])
def test_bad_camera_settings_are_named(key, value, expected):
    problems = config_problems(compose_config(["camera=proxies", f"{key}={value}"]))
    assert f"{key}={value}: expected {expected}" in problems, problems


def test_proxy_balanced_sampler_gives_k_images_of_every_pair():
    pids = [0, 0, 0, 0, 0, 1, 1, 2]
    cams = [0, 0, 0, 1, 1, 0, 3, 2]  # pairs: (0,0) x3, (0,1) x2, (1,0), (1,3), (2,2): five pairs
    sampler = ProxyBalancedSampler(pids, cams, batch_size=20, num_instances=4, iters=3, seed=1)
    batches = list(sampler.global_batches())
    assert len(batches) == 3 and all(len(b) == 20 for b in batches)
    first = batches[0]  # one pass is 5 pairs x 4 = 20 images: exactly the first batch
    pairs = [(pids[i], cams[i]) for i in first]
    assert sorted(set(pairs)) == [(0, 0), (0, 1), (1, 0), (1, 3), (2, 2)]
    assert all(pairs.count(p) == 4 for p in set(pairs))
    three = [i for i in first if (pids[i], cams[i]) == (0, 0)]
    assert sorted(set(three)) == [0, 1, 2]  # fewer than K: every image, then repeats
    assert sampler.max_per_cluster() == 8  # identity 0: two pairs x 4
    again = ProxyBalancedSampler(pids, cams, batch_size=20, num_instances=4, iters=3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again.global_batches()))


@pytest.mark.slow
def test_debug_fast_camera_aware_run_logs_both_terms(tiny_cfg):
    """debug=fast with camera=proxies and the camera-aware clusterer: it trains, and metrics.jsonl holds the
    intra term every trained epoch and the inter term from camera.inter_start_epoch on (null before)."""
    cfg = tiny_cfg("debug=fast", "camera=proxies", "clusterer.camera_aware=true", "camera.inter_start_epoch=1",
                   TINY_EPS)
    Trainer(cfg, cfg.run_dir).fit()
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows[1:] if r["clusters"] >= 2]
    assert [r["epoch"] for r in trained] == [1, 2], f"both epochs should train: {rows}"
    for r in trained:
        assert math.isfinite(r["loss"]) and math.isfinite(r["loss_intra"]) and r["loss_intra"] >= 0
        if r["epoch"] == 1:
            assert r["loss_inter"] is None
        else:
            assert math.isfinite(r["loss_inter"]) and r["loss_inter"] >= 0
