"""Mistakes caught before work starts, resume that never lies, and faults: SIGKILL at chosen points
(inside a checkpoint write too) and a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mqreid.utils import atomic
from mqreid.engine.checkpoint import load_checkpoint
from mqreid.engine.trainer import Trainer
from mqreid.engine.validate import ConfigError, config_problems, validate_config

from conftest import REPO, TINY, TINY_EPS, compose_config

HERE = Path(__file__).parent


def test_every_bad_setting_is_listed_at_once():
    cfg = compose_config(["train.iters=abc", "seed=-1", "train.batch_size=0", "memory.queue_size=0",
                          "clusterer.eps=-1", "eval.every=0", "train.sampler=bogus", "input.flip_p=2",
                          "optim.optimizer.lr=-1", "temp=learnable", "temp.tlr=-1", "+memory.queue_sz=3",
                          "train.cache_images=maybe", "train.cache_limit_mb=-1"])
    problems = "\n".join(config_problems(cfg))
    for expected in ("train.iters=abc: expected an integer >= 1", "seed=-1: expected an integer >= 0",
                     "train.batch_size=0", "eval.every=0", "clusterer.eps=-1: expected a float in (0, 1)", "train.sampler=bogus",
                     "input.flip_p=2", "optim.optimizer.lr=-1: expected a number > 0", "temp.tlr=-1: expected a number >= 0",
                     "memory.queue_sz is not a setting of mqreid.memory.MultiQueueMemory",
                     "train.cache_images=maybe: expected true or false", "train.cache_limit_mb=-1: expected an"):
        assert expected in problems, expected
    with pytest.raises(ConfigError, match="invalid setting"):
        validate_config(cfg)
    assert config_problems(compose_config([])) == []  # the defaults are valid
    for preset in ("market1501_dbscan", "msmt17_infomap", "veri_dbscan", "market1501_centroid"):
        assert config_problems(compose_config([f"experiment={preset}"])) == []
    bad = compose_config(["train.batch_size=60", "train.num_instances=16", "train.bn_group=7"])
    assert any("multiple of train.num_instances=16" in p for p in config_problems(bad))
    assert any("train.bn_group=7: expected a divisor" in p for p in config_problems(bad))


@pytest.mark.parametrize("world", [1, 2, 4, 8, 16])
def test_preset_batch_layout_holds_at_any_gpu_count(world):
    """Batch 256 with BN groups of 64: within a process at 1-4 processes, spanning 2 or 4 processes at 8 or 16."""
    from mqreid.engine.validate import batch_layout_problems, bn_span

    train = compose_config(["experiment=market1501_dbscan"]).train
    assert batch_layout_problems(train, world) == []
    assert bn_span(train, world) == {1: 1, 2: 1, 4: 1, 8: 2, 16: 4}[world]
    debug = compose_config(["debug=fast"]).train  # batch 16, groups of 8: at 4 processes each group spans 2
    assert batch_layout_problems(debug, 4) == [] and bn_span(debug, 4) == 2


def test_bn_groups_that_fit_no_layout_are_named():
    from mqreid.engine.validate import batch_layout_problems

    train = compose_config(["train.batch_size=96", "train.num_instances=4", "train.bn_group=36"]).train
    problems = batch_layout_problems(train, 1)
    assert problems == ["train.bn_group=36: expected a divisor of train.batch_size=96 (BatchNorm normalises fixed "
                        "groups of images of the global batch)"]
    train = compose_config(["train.batch_size=96", "train.num_instances=4", "train.bn_group=32"]).train
    assert batch_layout_problems(train, 4) == [
        "train.bn_group=32: expected a divisor or a multiple of the per-process batch of 24 images "
        "(train.batch_size=96 over 4 processes)"]


def test_deterministic_mode_names_pooling_without_a_deterministic_cuda_backward():
    import torch

    from mqreid.engine.validate import deterministic_problems

    cfg = compose_config(["train.deterministic=true", "backbone.pooling=avg"])
    assert deterministic_problems(cfg, torch.device("cpu")) == []  # CPU kernels are deterministic
    (problem,) = deterministic_problems(cfg, torch.device("cuda"))
    assert problem.startswith("backbone.pooling=avg: expected gem (the default) with train.deterministic=true on CUDA: "
                              "adaptive average pooling has no deterministic CUDA backward")
    assert deterministic_problems(compose_config(["train.deterministic=true"]), torch.device("cuda")) == []


def test_rank_zero_gets_the_cores_while_it_works_alone():
    import torch

    from mqreid.engine.distributed import DistEnv, main_works_alone

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with main_works_alone(DistEnv(rank=0, world_size=4), threads=2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with main_works_alone(DistEnv(rank=1, world_size=4), threads=2):  # the waiting ranks keep theirs
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_a_bad_setting_is_rejected_before_any_file_is_written(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "eval.every=0", "memory.queue_size=0",
                           f"data_root={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, WANDB_MODE="disabled"))
    assert proc.returncode == 2
    assert "2 invalid setting(s)" in proc.stderr and "eval.every=0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(tmp_path.iterdir()) == []  # no run directory, no generated data


def test_k1_larger_than_the_training_set_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match=r"clusterer.k1=500: expected fewer neighbours than the \d+ training"):
        Trainer(tiny_cfg("clusterer.k1=500"), "unused")


def _interrupted(tiny_cfg, tmp_path, *extra):
    first = tiny_cfg("train.epochs=2", TINY_EPS, *extra)
    first.run_dir = str(tmp_path / "part")
    trainer = Trainer(first, first.run_dir)
    trainer.cfg.train.epochs = 1  # "interrupted" after one epoch
    trainer.fit()
    return tmp_path / "part"


@pytest.mark.slow
def test_resume_refuses_settings_that_change_the_run(tiny_cfg, tmp_path):
    part = _interrupted(tiny_cfg, tmp_path)
    changed = tiny_cfg("train.epochs=2", TINY_EPS, f"resume={part}", "optim.optimizer.lr=0.1", "memory=centroid")
    with pytest.raises(ValueError, match="would change the run") as err:
        Trainer(changed, str(tmp_path / "again"))
    assert "optim.optimizer.lr: 0.00035 in the checkpoint, 0.1 now" in str(err.value)
    assert "memory._target_" in str(err.value)
    allowed = tiny_cfg("train.epochs=2", TINY_EPS, f"resume={part}", "eval.every=2", "progress=true")
    allowed.run_dir = str(tmp_path / "resumed")
    results = Trainer(allowed, allowed.run_dir).fit()
    resumed = Path(allowed.run_dir)
    # the resumed directory stands on its own: the whole history, best.pt, the total time
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert (resumed / "checkpoints" / "best.pt").is_file()
    first_seconds = load_checkpoint(part)["results"]["seconds"]
    assert results["seconds"] > first_seconds > 0
    assert results["best"]["epoch"] in (0, 1, 2)  # the untrained epoch 0 counts too


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("train.epochs=2", TINY_EPS)
    trainer = Trainer(cfg, cfg.run_dir)
    real_fsync, writes = os.fsync, []

    def fsync(fd):
        writes.append(fd)
        if len(writes) > 6:  # enough for the first epochs' files, then the disk is full
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(RuntimeError, match=r"could not write .*No space left.*previous .* is intact.*resume="):
        trainer.fit()
    state = load_checkpoint(Path(cfg.run_dir))  # still a complete, loadable file
    assert state["epoch"] in (0, 1)
    assert not [p for p in Path(cfg.run_dir).rglob("*.tmp")]


def _child(config: Path, run_dir: Path, *kill: str) -> int:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE / "fault_child.py"), str(config), str(run_dir), *kill],
                          capture_output=True, text=True, timeout=600, env=env, cwd=run_dir.parent)
    return proc.returncode


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def _assert_complete(run_dir: Path) -> None:
    """No file in the run directory is truncated: every JSON, JSONL and checkpoint parses."""
    for path in run_dir.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".pt":
            load_checkpoint(path)
        assert not path.name.endswith(".tmp"), f"a temporary file was left behind: {path}"


@pytest.mark.slow
@pytest.mark.parametrize("kill", [("5", "inside"), ("8", "before")], ids=["inside-a-write", "between-writes"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(data_root, tmp_path, kill):
    cfg = compose_config([*TINY, f"data_root={data_root}", "train.epochs=3", TINY_EPS])
    config = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config)
    assert _child(config, tmp_path / "full") == 0
    assert _child(config, tmp_path / "killed", *kill) == -9  # SIGKILL
    state = load_checkpoint(tmp_path / "killed")
    assert state["epoch"] < 3  # it really stopped early
    resumed_cfg = OmegaConf.merge(cfg, {"resume": str(tmp_path / "killed")})
    OmegaConf.save(resumed_cfg, config)
    assert _child(config, tmp_path / "resumed") == 0
    _assert_complete(tmp_path / "killed")  # the interrupted write's temporary file was cleared on resume
    _assert_complete(tmp_path / "resumed")
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "full")
    full = load_checkpoint(tmp_path / "full")["model"]
    resumed = load_checkpoint(tmp_path / "resumed")["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_debug_fast_composes_for_every_dataset():
    for name in ("market1501", "msmt17", "custom"):
        overrides = ["debug=fast", f"dataset={name}"] + (["dataset.root=/somewhere"] if name == "custom" else [])
        cfg = compose_config(overrides)
        assert "num_train_ids" not in cfg.dataset  # only the synthetic set is shrunk
        assert cfg.train.iters == 3 and config_problems(cfg) == []
    assert compose_config(["debug=fast"]).dataset.num_train_ids == 12


def test_loader_workers_follow_the_cores(monkeypatch):
    from mqreid.engine import validate

    monkeypatch.setattr(validate.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert validate.resolve_workers("auto") == 2 and validate.resolve_workers(3) == 3
    assert validate.resolve_workers("auto", in_memory=True) == 0  # augmenting only: the model needs both cores
    monkeypatch.setattr(validate.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert validate.resolve_workers("auto", in_memory=True) == 4
    monkeypatch.setattr(validate.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert validate.resolve_workers("auto") == 0


def test_resumed_run_carries_the_earlier_log_lines(tmp_path):
    import logging

    old, new = tmp_path / "old", tmp_path / "new"
    (old / "checkpoints").mkdir(parents=True)
    (old / "train.log").write_text("epoch 1/2 | earlier line\n")
    (old / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04weights")
    (new / "checkpoints").mkdir(parents=True)
    handler = logging.FileHandler(new / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        trainer = Trainer.__new__(Trainer)  # only the bookkeeping under test
        trainer.run_dir = new
        trainer._carry_over(old)
        logging.getLogger("mqreid").warning("a new line")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = (new / "train.log").read_text()
    assert text.index("earlier line") < text.index("resumed from") < text.index("a new line")
    assert (new / "checkpoints" / "best.pt").read_bytes() == b"PK\x03\x04weights"


def test_entry_points_print_user_mistakes_without_a_traceback(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: checkpoint: expected the checkpoint to evaluate") and \
        "python evaluate.py checkpoint=" in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "dataset=market1501",
                           f"data_root={tmp_path / 'datasets'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Error in call to target" not in proc.stderr
    assert "Error: missing folder" in proc.stderr and "MQREID_DATA=" in proc.stderr and "data_root=" in proc.stderr
