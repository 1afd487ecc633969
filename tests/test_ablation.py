"""bench/ablation.py: the grid it derives from a sweep, and completing a grid in parts (with a stand-in for
train.py that composes the same config and writes results.json at once, so no training runs)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import CONF, REPO
from mqreid.tools import report as rp

spec = importlib.util.spec_from_file_location("ablation", REPO / "bench" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
sys.modules.setdefault("ablation", ablation)  # dataclasses look their module up there
spec.loader.exec_module(ablation)

FAKE_TRAIN = f'''
import json, os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path={str(CONF)!r}, config_name="config")
def main(cfg):
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    task = list(hc.overrides.task)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(" ".join(task) + "\\n")
    final = 10.0 + cfg.seed + (5.0 if cfg.memory.get("queue_size") else 0.0)
    (out / "metrics.jsonl").write_text(json.dumps({{"epoch": 0, "mAP": 2.0}}) + "\\n")
    fail = os.environ.get("FAKE_FAIL")
    if fail and all(o in task for o in fail.split(",")):
        raise RuntimeError("stand-in failure")
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({{"epoch": 1, "mAP": final, "rank1": final}}) + "\\n")
    res = {{"epoch": 1, "mAP": final, "rank1": final, "rank5": final, "rank10": final}}
    (out / "results.json").write_text(json.dumps({{"initial": {{"mAP": 2.0}}, "best": res, "final": res}}))
    return final


if __name__ == "__main__":
    main()
'''


def test_grid_follows_hydra_order():
    jobs = ablation.grid("memory_temp_clusterer", [])
    assert len(jobs) == 24
    assert jobs[0] == ["memory=multi_queue", "temp=fixed", "clusterer=dbscan", "seed=0", "sweep=memory_temp_clusterer"]
    assert jobs[1][3] == "seed=1" and jobs[-1][:4] == ["memory=centroid", "temp=learnable", "clusterer=infomap", "seed=2"]
    jobs = ablation.grid("memory_temp_clusterer", ["seed=0,5", "clusterer=dbscan", "train.epochs=8", "hydra.verbose=true"])
    assert len(jobs) == 8  # --set replaces the sweep's values in place; hydra.* is not a job override
    assert jobs[1] == ["memory=multi_queue", "temp=fixed", "clusterer=dbscan", "seed=5", "sweep=memory_temp_clusterer",
                       "train.epochs=8"]
    assert ablation.grid("queue_size", [])[-1] == ["memory.queue_size=32", "sweep=queue_size"]


def test_rejects_unknown_sweep_and_folder_overrides(capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--sweep", "nope", "--dry-run"])
    assert "queue_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--set", "hydra.sweep.subdir=x", "--dry-run"])


def test_completes_a_grid_in_parts(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    log = tmp_path / "log.txt"
    monkeypatch.setattr(ablation, "TRAIN", fake)
    monkeypatch.setenv("FAKE_LOG", str(log))
    run_dir = tmp_path / "grid"
    args = ["--dir", str(run_dir), "--set", "seed=0,1", "clusterer=dbscan", "temp=fixed"]

    # part 1: the whole sweep in one multirun; job 3 (centroid, seed 1) fails
    monkeypatch.setenv("FAKE_FAIL", "memory=centroid,seed=1")
    assert ablation.main(args) == 1
    out = capsys.readouterr().out
    assert "-m sweep=memory_temp_clusterer hydra.sweep.dir=" in out and "seed=0,1" in out
    assert len(log.read_text().splitlines()) == 4
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert not (run_dir / "3" / "results.json").exists()
    assert "`3` (memory=centroid seed=1)" in (run_dir / "report.md").read_text()
    sweep_yaml = (run_dir / "multirun.yaml").read_text()
    assert "seed=0,1" in sweep_yaml

    # part 2: only the unfinished job runs again, in the folder Hydra gave it; the old folder is moved aside
    monkeypatch.delenv("FAKE_FAIL")
    assert ablation.main(args) == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("memory=centroid temp=fixed clusterer=dbscan seed=1")
    assert (run_dir / "3" / "results.json").is_file()
    assert [p.name.split("-")[0] for p in (run_dir / ".incomplete").iterdir()] == ["3"]
    assert (run_dir / "multirun.yaml").read_text() == sweep_yaml  # the full sweep's, not the single job's
    assert not (run_dir / ablation.LOCK).exists()
    report = rp.build_report([run_dir])
    assert not report.excluded and [(r.group.label, r.n) for r in report.rows] == [
        ("memory=centroid", 2), ("memory=multi_queue", 2)]
    assert report.rows[1].diff.mean == pytest.approx(5.0) and report.rows[1].diff.n_pairs == 2
    assert (run_dir / "report.csv").is_file()

    # part 3: nothing left to run
    assert ablation.main(args) == 0
    assert len(log.read_text().splitlines()) == 5

    # a larger grid over the same folder: done jobs are matched by their overrides, not their folder number
    capsys.readouterr()
    assert ablation.main([*args[:3], "seed=0,1,2", *args[4:], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 job(s)" in out and "4 done, 2 to run" in out
    assert "#2: memory=multi_queue temp=fixed clusterer=dbscan seed=2 sweep=memory_temp_clusterer: to run in 6/" in out
    assert "#3: memory=centroid temp=fixed clusterer=dbscan seed=0 sweep=memory_temp_clusterer: done in 2/" in out
    assert "#5: memory=centroid temp=fixed clusterer=dbscan seed=2 sweep=memory_temp_clusterer: to run in 5/" in out
    assert len(log.read_text().splitlines()) == 5


def test_lock_refuses_a_second_run(tmp_path, capsys):
    run_dir = tmp_path / "grid"
    run_dir.mkdir()
    (run_dir / ablation.LOCK).write_text("123\n")
    assert ablation.main(["--dir", str(run_dir), "--set", "seed=0"]) == 2
    assert "another bench/ablation.py" in capsys.readouterr().err
    assert (run_dir / ablation.LOCK).exists()
