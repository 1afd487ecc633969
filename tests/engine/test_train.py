"""End-to-end training on a tiny synthetic set: every memory, clusterer and temperature mode, resume,
checkpoints, results and evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mqreid.engine.checkpoint import load_checkpoint, save_atomic
from mqreid.engine.trainer import Trainer

from conftest import TINY_EPS

MODES = [
    ["memory=multi_queue", "temp=fixed", "clusterer=dbscan"],
    ["memory=centroid", "temp=learnable", "clusterer=infomap"],
    ["memory=multi_queue", "memory.init=members", "memory.proxy=mean", "temp=learnable", "clusterer=dbscan"],
    ["memory=centroid", "memory.hard=true", "temp=fixed", "clusterer=infomap"],
]


def res_rows(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _run(cfg):
    results = Trainer(cfg, cfg.run_dir).fit()
    return results, Path(cfg.run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("modes", MODES, ids=[" ".join(m) for m in MODES])
def test_every_mode_trains(tiny_cfg, modes):
    cfg = tiny_cfg(*modes, "clusterer.min_cluster_size=2" if "infomap" in modes[-1] else TINY_EPS)
    results, run = _run(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    trained = [r for r in rows[1:] if r["clusters"] >= 2]
    assert trained, f"no epoch formed two clusters: {rows}"
    for r in trained:
        assert math.isfinite(r["loss"]) and r["temperature"] > 0
        assert {"ari", "nmi", "purity", "time_extract", "time_cluster", "time_train", "mAP", "rank1"} <= r.keys()
    saved = json.loads((run / "results.json").read_text())
    for key in ("initial", "best", "final"):
        assert 0.0 <= saved[key]["mAP"] <= 100.0 and 0.0 <= saved[key]["rank1"] <= 100.0
    assert saved["world_size"] == 1
    if "temp=learnable" in modes:
        assert rows[-1]["temperature"] != pytest.approx(0.05, abs=1e-9)  # it was trained
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and "optimizer" in state
    assert load_checkpoint(run)["path"].endswith("last.pt")  # a run directory works too


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tiny_cfg, tmp_path):
    full = tiny_cfg("train.epochs=3", TINY_EPS)
    full.run_dir = str(tmp_path / "full")
    ref, _ = _run(full)
    first = tiny_cfg("train.epochs=3", TINY_EPS)
    first.run_dir = str(tmp_path / "part")
    trainer = Trainer(first, first.run_dir)
    trainer.cfg.train.epochs = 1  # "interrupted" after one epoch
    trainer.fit()
    again = tiny_cfg("train.epochs=3", TINY_EPS, f"resume={tmp_path / 'part'}")
    again.run_dir = str(tmp_path / "resumed")
    res, run = _run(again)
    assert any(r.get("clusters", 0) >= 2 for r in res_rows(tmp_path / "full")), "the runs must train"
    assert res["final"] == ref["final"] and res["best"] == ref["best"] and res["initial"] == ref["initial"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_degenerate_clustering_is_reported_not_crashed(tiny_cfg, caplog):
    caplog.set_level("INFO", logger="mqreid")
    cfg = tiny_cfg("clusterer.min_samples=1000", "train.epochs=1")  # no core point: all outliers
    results, run = _run(cfg)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["clusters"] == 0 and row["outlier_ratio"] == 1.0 and row["loss"] is None  # NaN is written as null
    assert "training skipped" in caplog.text
    assert f"run directory: {run}" in caplog.text  # said at the start, not only at the end


def test_atomic_checkpoint_keeps_the_last_good_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {}, "epoch": 1, "config": {}}, path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {}, "epoch": 2, "config": {}}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_checkpoint(tmp_path / "nothere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a checkpoint: a .pt file written by train.py is a zip"):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not a checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save({"model": {}, "epoch": 1, "config": {}, "extra": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pickled.pt cannot be loaded safely") as err:
        load_checkpoint(tmp_path / "pickled.pt")
    assert "weights_only" not in str(err.value)  # torch's advice to turn it off would be unsafe here
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not an mqreid checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_format_versions(tmp_path):
    from mqreid.engine.checkpoint import FORMAT_VERSION

    save_atomic({"model": {}, "epoch": 1, "config": {}, "memory": None, "rng": {}}, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["format"] == 1  # older files (no "format") still load
    save_atomic({"format": FORMAT_VERSION + 1, "model": {}, "epoch": 1, "config": {}}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match=f"new.pt has checkpoint format {FORMAT_VERSION + 1}.*upgrade mqreid"):
        load_checkpoint(tmp_path / "new.pt")


def test_json_writer_is_atomic_and_strict(tmp_path, monkeypatch):
    from mqreid.utils import atomic
    from mqreid.engine import checkpoint

    path = tmp_path / "results.json"
    checkpoint.write_json_atomic(path, {"mAP": float("nan"), "rows": [1.0, float("inf")]})
    assert json.loads(path.read_text()) == {"mAP": None, "rows": [1.0, None]}  # valid JSON: NaN -> null

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write_json_atomic(path, {"mAP": 1.0})
    assert json.loads(path.read_text())["mAP"] is None  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_camera_centering_removes_the_per_camera_mean():
    from mqreid.cluster import camera_centering

    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(12, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0]), dim=1)
    cams = torch.tensor([0] * 6 + [1] * 6)
    out = camera_centering(feats, cams)
    assert torch.allclose(out.norm(dim=1), torch.ones(12), atol=1e-6)
    for c in (0, 1):  # centred before normalising: the direction of the mean is gone
        centred = feats[cams == c] - feats[cams == c].mean(0)
        assert torch.allclose(out[cams == c], torch.nn.functional.normalize(centred, dim=1), atol=1e-6)


def test_best_counts_the_untrained_epoch():
    import time as time_module

    trainer = Trainer.__new__(Trainer)  # only the bookkeeping under test
    trainer.history, trainer.results, trainer.is_main, trainer._started = [], {}, False, time_module.perf_counter()
    row = {"mAP": 5.0, "rank1": 1.0, "rank5": 2.0, "rank10": 3.0}
    trainer._close_epoch({"epoch": 0, **row})
    trainer._close_epoch({"epoch": 1, **row, "mAP": 3.0})  # training made it worse
    assert trainer.results["best"]["epoch"] == 0 and trainer.results["best"]["mAP"] == 5.0


@pytest.mark.slow
def test_the_image_cache_does_not_change_the_run(tiny_cfg, tmp_path):
    runs = {}
    for cached in ("true", "false"):
        cfg = tiny_cfg("train.epochs=2", TINY_EPS, f"train.cache_images={cached}")
        cfg.run_dir = str(tmp_path / cached)
        trainer = Trainer(cfg, cfg.run_dir)
        assert (trainer.image_cache is not None) == (cached == "true")
        runs[cached] = (trainer.fit(), load_checkpoint(tmp_path / cached / "checkpoints" / "last.pt")["model"])
    assert any(r.get("clusters", 0) >= 2 for r in res_rows(tmp_path / "true")), "the runs must train"
    assert runs["true"][0]["final"] == runs["false"][0]["final"]
    assert all(torch.equal(runs["true"][1][k], runs["false"][1][k]) for k in runs["false"][1])


def test_a_split_over_the_cache_limit_is_read_from_files_and_the_log_says_how_much_is_missing(tiny_cfg, caplog):
    caplog.set_level("INFO", logger="mqreid")
    size = ("input.height=256", "input.width=128")
    probe = Trainer(tiny_cfg(*size), tiny_cfg().run_dir)
    train_mib = len(probe.dataset.train) * probe.image_cache.image_bytes() / 2**20
    limit = 2  # MiB: less than the tiny set's training images at 256x128 (12 MiB), more than its query
    assert train_mib > limit
    trainer = Trainer(tiny_cfg(*size, f"train.cache_limit_mb={limit}"), tiny_cfg().run_dir)
    assert not trainer.train_in_memory
    line = next(r.getMessage() for r in caplog.records if "image cache:" in r.getMessage()
                and "train read from files" in r.getMessage())
    assert f"train read from files (it needs {train_mib - limit:.0f} MiB more than train.cache_limit_mb=2" in line
    assert line.startswith("image cache: query in memory")


def test_the_optimiser_is_fused_on_cuda_only():
    """Adam (and any optimiser with a fused kernel) gets fused=True on CUDA; CPU runs and a config that sets
    fused itself are left as they are."""
    from omegaconf import OmegaConf

    from mqreid.engine.trainer import fused_on_cuda

    adam = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3.5e-4})
    assert fused_on_cuda(adam, torch.device("cuda", 0)) == {"fused": True}
    assert fused_on_cuda(adam, torch.device("cpu")) == {}
    assert fused_on_cuda(OmegaConf.merge(adam, {"fused": False}), torch.device("cuda", 0)) == {}
    lbfgs = OmegaConf.create({"_target_": "torch.optim.LBFGS", "_partial_": True})
    assert fused_on_cuda(lbfgs, torch.device("cuda", 0)) == {}


def test_a_cpu_run_records_what_decides_its_low_bits(monkeypatch):
    """environment.json's numerics on the CPU: the CPU's model, the vector instructions torch dispatches to
    and the thread count (a run repeats bit for bit only where all three are the same)."""
    from mqreid.engine import trainer

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(trainer, "cpu_model", lambda: "Some CPU")
    assert trainer.numerics(torch.device("cpu")) == {"cpu": "Some CPU", "cpu_capability": "AVX2", "threads": 3}
    monkeypatch.undo()
    assert isinstance(trainer.cpu_model(), str) and trainer.cpu_model()  # the real one: a name or the architecture
