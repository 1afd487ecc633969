"""DistributedDataParallel on CPU (gloo): 2 processes stay in lock-step and reproduce the single-process run.

Same global batch, BatchNorm over fixed groups of images, and every random draw keyed to the sample (not the
rank): the number of processes must not change the run beyond floating-point noise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import REPO, TINY, TINY_EPS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), WANDB_MODE="disabled")
    torch.set_num_threads(1)
    from mqreid.engine import distributed
    from mqreid.engine.trainer import Trainer

    trainer = Trainer(cfg, cfg.run_dir)
    results = trainer.fit()
    torch.save({"model": trainer.model.state_dict(), "memory": trainer.memory.state_dict(),
                "temperature": trainer.temperature.state_dict(), "results": results},
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup()


@pytest.fixture
def ddp_cfg(tiny_cfg):
    return tiny_cfg("temp=learnable", TINY_EPS, "train.epochs=3", "train.iters=3", "input.color_jitter=0.4")


@pytest.mark.slow
def test_two_ranks_stay_identical_and_match_one_process(ddp_cfg, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), ddp_cfg, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("model", "memory", "temperature"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["world_size"] == 2

    from mqreid.engine.trainer import Trainer

    single_cfg = ddp_cfg.copy()
    single_cfg.run_dir = str(tmp_path / "single")
    trainer = Trainer(single_cfg, single_cfg.run_dir)
    single = trainer.fit()
    # same initial weights and the same features: the untrained evaluation agrees exactly
    assert saved["initial"]["mAP"] == pytest.approx(single["initial"]["mAP"], abs=1e-3)
    rows = [[json.loads(line) for line in open(d / "metrics.jsonl")] for d in (tmp_path / "run", tmp_path / "single")]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == [0, 1, 2, 3]
    for two, one in zip(*rows):
        if two["epoch"] > 0:
            assert two["clusters"] == one["clusters"] and two["outlier_ratio"] == one["outlier_ratio"]
            assert two["loss"] == pytest.approx(one["loss"], rel=1e-3)
            assert two["temperature"] == pytest.approx(one["temperature"], abs=1e-7)
        assert two["mAP"] == pytest.approx(one["mAP"], abs=0.5)
    ref = torch.load(tmp_path / "rank0.pt", weights_only=True)
    # floating-point drift over 3 epochs: most entries agree to ~5e-5; BatchNorm running means, which
    # accumulate every batch's statistics, were seen 1.1e-3 apart with two torch threads per process
    for k, v in trainer.model.state_dict().items():
        atol = 3e-3 if "running_" in k else 1e-3
        assert torch.allclose(ref["model"][k].float(), v.float(), atol=atol), k


@pytest.mark.slow
def test_torchrun_command_line(data_root, tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
         *TINY, "train.epochs=1", f"data_root={data_root}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_four_ranks_with_batchnorm_groups_spanning_processes(tiny_cfg, tmp_path):
    """debug=fast's layout at 4 processes: batch 16, BN groups of 8, so each process holds 4 images and every
    group spans two processes. Epoch 1 clusters the same features and trains the same steps as 1 process."""
    cfg = tiny_cfg(TINY_EPS, "train.epochs=1", "train.iters=3")
    mp.spawn(_worker, args=(4, _free_port(), cfg, str(tmp_path)), nprocs=4, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(4)]
    for k in ranks[0]["model"]:  # BN running statistics are averaged after the epoch: every rank agrees
        assert all(torch.equal(ranks[0]["model"][k], r["model"][k]) for r in ranks[1:]), k

    from mqreid.engine.trainer import Trainer

    single_cfg = cfg.copy()
    single_cfg.run_dir = str(tmp_path / "single")
    trainer = Trainer(single_cfg, single_cfg.run_dir)
    trainer.fit()
    four, one = ([json.loads(line) for line in open(d / "metrics.jsonl")][1] for d in (tmp_path / "run",
                                                                                      tmp_path / "single"))
    assert four["clusters"] == one["clusters"] >= 2 and four["outlier_ratio"] == one["outlier_ratio"]
    assert four["loss"] == pytest.approx(one["loss"], rel=1e-3)
    for k, v in trainer.model.state_dict().items():
        assert torch.allclose(ranks[0]["model"][k].float(), v.float(), atol=1e-3), k


def test_one_thread_per_process_as_torchrun_sets_it(monkeypatch):
    """Several SLURM tasks on a node get OMP_NUM_THREADS=1 and one torch thread each, as torchrun gives its
    processes; a user's OMP_NUM_THREADS, or one task per node, is left alone."""
    from mqreid.engine.distributed import one_thread_per_process

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert not one_thread_per_process(1) and "OMP_NUM_THREADS" not in os.environ
        assert one_thread_per_process(4) and os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "6")
        assert not one_thread_per_process(4) and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_host_waits_use_the_default_group_on_gloo():
    """Without a process group, or with gloo as the default group (CPU runs), the host's barriers and
    broadcasts need no second group; NCCL runs get a gloo group for them (the GPU check runs that path)."""
    from mqreid.engine import distributed

    assert distributed.host_group() is None
    assert distributed.broadcast_object({"labels": [1, 2]}) == {"labels": [1, 2]}
    distributed.barrier()  # a no-op in one process
