"""bench/gpu_check.py --smoke: every section of the GPU check runs on the CPU at toy sizes and passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, WANDB_MODE="disabled")
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_check.json").read_text())
    failed = [row for row in report["rows"] if row["status"] == "FAIL"]
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-4000:], (out / "gpu_check.log").read_text()[-6000:])
    assert report["mode"] == "smoke"
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    for name in gpu_check.SECTIONS:
        rows = [row for row in report["rows"] if row["section"] == name]
        assert any(row["status"] != "SKIP" for row in rows), name  # it ran
        assert report["sections"][name]["exit"] == 0, name
    assert {row["status"] for row in report["rows"]} <= {"PASS", "SKIP", "INFO"}
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("# mqreid GPU check: smoke") and "| section | measure | value | criterion | result |" in table
    assert (out / "gpu_check.log").stat().st_size > 0
    assert "| section | measure | value | criterion | result |" in proc.stdout


def test_compare_rows_ignores_times_and_tolerates_tiny_loss_differences():
    a = [{"epoch": 0, "mAP": 10.0, "time_eval": 1.0}, {"epoch": 1, "loss": 2.0, "mAP": 12.0, "time_train": 3.0}]
    b = [{"epoch": 0, "mAP": 10.0, "time_eval": 9.0}, {"epoch": 1, "loss": 2.0 + 5e-7, "mAP": 12.0, "time_train": 1.0}]
    same, how = gpu_check.compare_rows(a, b)
    assert same, how
    b[1]["loss"] = 2.001
    assert gpu_check.compare_rows(a, b) == (False, "epoch 1: loss 2.0 vs 2.001")
    b[1]["loss"], b[1]["mAP"] = 2.0, 12.5
    assert gpu_check.compare_rows(a, b) == (False, "epoch 1: mAP 12.0 vs 12.5")


def test_unknown_section_is_refused(tmp_path, capsys):
    assert gpu_check.main(["--sections", "environment,nope", "--out", str(tmp_path)]) == 2
    assert "unknown section(s) nope" in capsys.readouterr().err
