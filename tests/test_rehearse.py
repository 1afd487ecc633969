"""bench/rehearse.py at a tiny size: every command runs through the trainer and prints its tables and figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

TINY = ["dataset.num_train_ids=8", "dataset.num_test_ids=6", "dataset.num_train_images=48", "dataset.num_query=12",
        "dataset.num_gallery=24", "dataset.num_distractors=0", "dataset.height=64", "dataset.width=32",
        "input.height=64", "input.width=32", "train.batch_size=16", "train.num_instances=4", "train.bn_group=8",
        "train.test_batch_size=32"]


@pytest.mark.slow
def test_all_commands_at_a_tiny_size(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "rehearse.py"), "all", "--threads", "1", "--backbone", "small_cnn",
           "--iters", "2", "--batches", "2", "--extract-batch", "8", "--fallback-batch", "8",
           "--data-root", str(tmp_path), *TINY]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300).stdout
    lines = out.splitlines()
    assert sum(line.startswith("| stage | seconds | measured/extrapolated | peak RSS (MB) | notes |") for line in lines) == 3
    assert sum(line.startswith("commit: ") for line in lines) == 3
    results = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["command"] for r in results] == ["market", "resnet50", "msmt17", "all"]
    market, resnet, msmt, combined = results
    assert market["figures"]["steps"] == 2 and market["figures"]["preset_iters"] == 200
    assert market["figures"]["evaluations"] == 6 and market["figures"]["run_s"] > market["figures"]["epoch_s"] > 0
    assert resnet["figures"]["step_batch"] == 16 and resnet["figures"]["extract_img_s"] > 0
    assert msmt["figures"]["extract_img_s"] == pytest.approx(resnet["figures"]["extract_img_s"])
    assert msmt["figures"]["iters"] == 400 and 0 <= msmt["figures"]["ari"] <= 1
    assert set(combined["figures"]) == {"market", "resnet50", "msmt17"}
    for result in results[:3]:
        measured = [r for r in result["rows"] if r["kind"] == "measured"]
        assert measured and all(r["seconds"] >= 0 and r["peak_rss_mb"] > 0 for r in measured)
        assert any(r["kind"] == "extrapolated" for r in result["rows"])


@pytest.mark.slow
def test_the_vit_command_measures_at_its_batch_and_extrapolates_the_presets(tmp_path):
    pytest.importorskip("timm")
    cmd = [sys.executable, str(REPO / "bench" / "rehearse.py"), "vit", "--threads", "1", "--batch-size", "8",
           "--batches", "2", "--extract-batch", "4", "backbone.depth=1", "input.height=32", "input.width=16"]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300).stdout
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    figures, rows = result["figures"], {r["stage"]: r for r in result["rows"]}
    assert result["command"] == "vit" and result["title"].startswith("vit_small_ics at 32x16, batch 8")
    assert figures["step_batch"] == 8 and figures["batch"] == 256 and figures["step_img_s"] > 0
    assert figures["step_s"] == pytest.approx(figures["step_s_measured"] * 32)
    gpu, model = rows["GPU memory at batch 256"], rows["model, memory and optimiser"]
    assert gpu["kind"] == "extrapolated" and "SGD state" in gpu["notes"]
    assert "vit_small_ics" in model["notes"] and "SGD" in model["notes"]
