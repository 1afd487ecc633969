"""The real command lines: a 2-job Hydra multirun of train.py, then evaluate.py on its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY


def _run(args, cwd):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_multirun_then_evaluate(data_root, tmp_path):
    sweep = tmp_path / "multirun"
    # bf16 autocast (on the CPU here; by device type): evaluate.py must extract in the checkpoint's precision
    _run([str(REPO / "train.py"), "-m", "memory=multi_queue,centroid", *TINY, "train.epochs=1",
          "train.precision=bf16", f"data_root={data_root}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.json").exists())
    assert [p.name for p in jobs] == ["0", "1"]
    chosen = {o for p in jobs for o in (p / ".hydra" / "overrides.yaml").read_text().split() if "memory=" in o}
    assert chosen == {"memory=multi_queue", "memory=centroid"}
    for job in jobs:
        res = json.loads((job / "results.json").read_text())
        assert set(res) >= {"initial", "best", "final"} and (job / ".hydra" / "config.yaml").exists()
    ckpt = jobs[0] / "checkpoints" / "best.pt"
    # no dataset given: the checkpoint's own (the tiny set it was trained on), not evaluate.py's default
    proc = _run([str(REPO / "evaluate.py"), f"checkpoint={ckpt}", "eval.rerank=true", "progress=false",
                 f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    out = json.loads((jobs[0] / "checkpoints" / "best_eval_synthetic.json").read_text())
    assert set(out) >= {"plain", "re-ranked"} and 0 <= out["plain"]["mAP"] <= 100
    assert out["precision"] == "bf16"
    best = json.loads((jobs[0] / "results.json").read_text())["best"]
    assert abs(out["plain"]["mAP"] - best["mAP"]) < 1e-3  # the same model, the same numbers
    assert "Rank-1" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_evaluate_names_a_missing_checkpoint(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"checkpoint={tmp_path / 'none.pt'}",
                           f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "none.pt does not exist" in proc.stderr
