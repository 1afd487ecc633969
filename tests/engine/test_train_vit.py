"""End to end with a ViT: `debug=fast backbone=vit_small` trains, and its run works with evaluate.py, the
inference API, the report and the pictures; a ViT-S+ICS run resumes exactly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mqreid.engine.checkpoint import load_checkpoint
from mqreid.engine.trainer import Trainer

from conftest import REPO, TINY_EPS, compose_config

pytest.importorskip("timm")


@pytest.mark.slow
def test_debug_fast_vit_small_trains_and_its_run_is_evaluated_with_its_normalisation(tmp_path):
    """At eps 0.6 the untrained ViT's features make one cluster on the debug set; 0.4 gives several."""
    run = tmp_path / "runs" / "0"
    command = [sys.executable, "train.py", "debug=fast", "backbone=vit_small", "input.mean=[0.5,0.5,0.5]",
               "input.std=[0.5,0.5,0.5]", TINY_EPS, f"data_root={tmp_path / 'data'}", f"hydra.run.dir={run}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    trained = [r for r in rows[1:] if r["clusters"] >= 2]
    assert trained and all(math.isfinite(r["loss"]) for r in trained), rows
    assert (run / "clusters" / "epoch001.png").is_file()  # the pictures
    results = json.loads((run / "results.json").read_text())
    best = run / "checkpoints" / "best.pt"
    stored = load_checkpoint(best)["config"]
    assert stored["backbone"]["img_size"] == [64, 32] and stored["input"]["mean"] == [0.5, 0.5, 0.5]

    from mqreid.engine.evaluator import run_evaluation
    from mqreid.inference import ReIDModel
    from mqreid.tools.report import build_report

    # evaluate.py's code path, on the checkpoint's own dataset, in its normalisation: the training's figures
    cfg = compose_config([f"checkpoint={best}", "device=cpu", "progress=false"], name="eval")
    evaluated = run_evaluation(cfg)
    assert evaluated["plain"]["mAP"] == pytest.approx(results["best"]["mAP"], abs=1e-6)
    model = ReIDModel.from_checkpoint(best, device="cpu")
    assert model.normalization == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    assert model.embed(torch.zeros(2, 3, 40, 20, dtype=torch.uint8)).shape == (2, 384)
    report = build_report([tmp_path / "runs"])
    assert len(report.rows) == 1 and report.excluded == []
    assert report.rows[0].stats[("final", "mAP")].mean == pytest.approx(results["final"]["mAP"])


@pytest.mark.slow
def test_a_vit_ics_run_resumes_exactly(tiny_cfg, tmp_path):
    vit = ["backbone=vit_small_ics", "backbone.depth=2", "optim=sgd", "optim.optimizer.lr=0.01", TINY_EPS]
    full = tiny_cfg(*vit)
    full.run_dir = str(tmp_path / "full")
    reference = Trainer(full, full.run_dir).fit()
    first = tiny_cfg(*vit)
    first.run_dir = str(tmp_path / "part")
    trainer = Trainer(first, first.run_dir)
    trainer.cfg.train.epochs = 1  # "interrupted" after one epoch
    trainer.fit()
    last = tmp_path / "part" / "checkpoints" / "last.pt"  # as written before input.mean/std were settings
    state = torch.load(last, weights_only=True)
    del state["config"]["input"]["mean"], state["config"]["input"]["std"]
    torch.save(state, last)
    again = tiny_cfg(*vit, f"resume={tmp_path / 'part'}")
    again.run_dir = str(tmp_path / "resumed")
    resumed = Trainer(again, again.run_dir).fit()
    assert resumed["final"] == reference["final"] and resumed["best"] == reference["best"]
    a = load_checkpoint(Path(full.run_dir) / "checkpoints" / "last.pt")
    b = load_checkpoint(Path(again.run_dir) / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "trunk.patch_embed.conv.1.BN.running_mean" in a["model"]  # the ICS stem's BatchNorm is saved
    assert a["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert OmegaConf.create(a["config"]).backbone.arch == "vit_small_ics"
